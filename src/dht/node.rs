//! The node: one [`Dht`] state machine tying the routing table, outstanding queries,
//! lookups and the peer store together. Sans-IO: see the module root.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use thin_vec::ThinVec;

use crate::id::Id;
use crate::krpc::{
    Body, DhtAddr, ErrorCode, KrpcError, Message, Method, NodeInfo, Query, Response, Want,
};

use super::bep42::{self, Bep42Mode};
use super::entropy::Entropy;
use super::lookup::{AnnounceSpec, Lookup, LookupId, LookupKind, LookupParams, LookupStats};
use super::martian::{self, PrivateNodes};
use super::ratelimit::{RateLimiter, RateLimits, TokenBucket};
use super::routing::{Insert, NodeState, RoutingTable, TimeoutOutcome};
use super::rpc::{Outstanding, Purpose, Rpc};
use super::store::{PeerStore, StoreLimits, Tokens};
use super::time::Time;

/// Client version we put in the `v` key: "DN" and version 0.1.
pub const CLIENT_VERSION: [u8; 4] = *b"DN\x00\x01";

/// Tunables of the node. Defaults follow BEP 5 and what the simulator measured.
/// Comparable so that nodes made with equal configurations can share one copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Bucket size and lookup width.
    pub k: usize,
    /// Lookup queries in flight.
    pub alpha: usize,
    /// After this long without an answer a lookup query stops counting against `alpha`.
    pub widen_after: Duration,
    /// After this long without an answer a query has failed.
    pub query_timeout: Duration,
    /// Buckets untouched this long are refreshed with a lookup.
    pub refresh_after: Duration,
    /// Token secret rotation interval.
    pub token_interval: Duration,
    /// Bounds of the peer store.
    pub store: StoreLimits,
    /// Keep at most one routing entry per IP address.
    pub one_per_ip: bool,
    /// BEP 43 read-only: do not answer queries and ask others not to add us.
    pub read_only: bool,
    /// Peers returned per get_peers answer.
    pub max_values: usize,
    /// Verification pings sent to unknown queriers per second at most.
    pub verify_pings_per_sec: u32,
    /// Flood protection (per-IP packet budget, global reply budget).
    pub rate_limits: RateLimits,
    /// BEP 42 node-id verification: off, prefer verified nodes, or enforce.
    pub bep42: Bep42Mode,
    /// Re-derive our id from our external IP (BEP 42) once other nodes agree on that IP.
    pub bep42_derive_id: bool,
    /// First retry of the join while the table holds fewer than `k` nodes; each further
    /// retry waits twice as long, up to 5 minutes.
    pub bootstrap_retry: Duration,
    /// Which loopback and private addresses listed in answers a lookup may query (the
    /// martian filter; unroutable addresses are always refused).
    pub private_nodes: PrivateNodes,
    /// Candidates one lookup keeps per public IP address. libtorrent keeps one node per /24
    /// in a lookup (`dht_restrict_search_ips`); two per address still lets a household with
    /// two clients behind one NAT take part, while a node listing many ports of one host
    /// cannot fill the lookup. Local addresses are exempt (test networks share a host).
    pub lookup_max_per_ip: usize,
    /// Queries one lookup sends at most. A lookup in a network of millions needs a few dozen
    /// (about log2 of the size, alpha at a time, plus dead nodes); 256 is ample headroom and
    /// stops a responder that feeds ever-closer fake ids from keeping a lookup alive forever.
    pub lookup_max_queries: u32,
    /// Wall time one lookup may take. A healthy lookup ends in 1-5 s; 20 s leaves room for a
    /// network where most contacts are dead (each costs `widen_after`) and still ends, with
    /// its announces, before the callers' 30 s announce wait.
    pub lookup_timeout: Duration,
    /// Distinct peers one get_peers lookup reports (and remembers for deduplication); the
    /// rest are dropped. A swarm rarely needs more; it bounds what answers can make us hold.
    pub lookup_max_peers: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            k: 8,
            alpha: 4,
            widen_after: Duration::from_millis(500),
            query_timeout: Duration::from_secs(2),
            refresh_after: Duration::from_secs(15 * 60),
            token_interval: Duration::from_secs(5 * 60),
            store: StoreLimits::default(),
            one_per_ip: true,
            read_only: false,
            max_values: 50,
            verify_pings_per_sec: 20,
            bootstrap_retry: Duration::from_secs(5),
            rate_limits: RateLimits::default(),
            bep42: Bep42Mode::Prefer,
            bep42_derive_id: true,
            private_nodes: PrivateNodes::SameScope,
            lookup_max_per_ip: 2,
            lookup_max_queries: 256,
            lookup_timeout: Duration::from_secs(20),
            lookup_max_peers: 1000,
        }
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit<A = SocketAddrV4> {
    /// Destination.
    pub to: A,
    /// Bencoded KRPC message.
    pub data: Vec<u8>,
}

/// What the node reports to its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event<A: DhtAddr = SocketAddrV4> {
    /// New peers for a get_peers lookup, as soon as an answer carries them.
    Peers {
        /// The lookup.
        lookup: LookupId,
        /// Peers not reported before by this lookup.
        peers: Vec<A>,
    },
    /// A lookup finished.
    LookupDone {
        /// The lookup.
        lookup: LookupId,
        /// Its target.
        target: Id,
        /// Counters.
        stats: LookupStats,
        /// How long it took.
        elapsed: Duration,
        /// The closest nodes that answered.
        closest: Vec<NodeInfo<A>>,
        /// announce_peer queries sent afterwards.
        announced: usize,
    },
    /// A node acknowledged our announce_peer for a lookup's info-hash.
    AnnounceAcked {
        /// The get_peers lookup that announced.
        lookup: LookupId,
        /// The node that stored us.
        node: A,
    },
    /// Our id changed to match our external IP (BEP 42).
    IdChanged {
        /// The new id.
        id: Id,
        /// The external address it was derived from.
        external: A::Ip,
    },
    /// The bootstrap lookup finished.
    Bootstrapped {
        /// Routing table size afterwards.
        nodes: usize,
    },
}

/// Traffic and state counters, for status lines and benchmarks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queries received.
    pub queries_in: u64,
    /// Queries sent.
    pub queries_out: u64,
    /// Responses received (matched to our queries).
    pub responses_in: u64,
    /// Our queries that timed out.
    pub timeouts: u64,
    /// Datagrams we could not decode.
    pub malformed_in: u64,
    /// Datagrams that matched nothing we asked.
    pub unsolicited_in: u64,
    /// announce_peer queries we accepted.
    pub announces_in: u64,
    /// announce_peer queries with a valid token that the store had no room for. They are
    /// answered like accepted ones (libtorrent counts an error reply as a failure of the
    /// node that sent it), so this is the only place a refusal shows.
    pub announces_refused: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Datagrams dropped by the per-IP limiter.
    pub dropped_rate_limited: u64,
    /// Queries sent to keep stale buckets fresh (refresh queries and the queries of refresh
    /// lookups): the upkeep cost that the simulator reports per node and hour.
    pub refresh_queries: u64,
}

thread_local! {
    /// The configuration the last node made on this thread uses: the simulator makes a
    /// million nodes from equal `Config`s, and they share this one copy instead of holding
    /// one each (248 bytes a node).
    static LAST_CONFIG: RefCell<Option<Arc<Config>>> = const { RefCell::new(None) };
}

/// `cfg` as a shared copy: the last node's if equal, else a new one that the next node can
/// share.
fn shared_config(cfg: Config) -> Arc<Config> {
    LAST_CONFIG.with(|last| {
        let mut last = last.borrow_mut();
        if let Some(same) = last.as_ref().filter(|c| ***c == cfg) {
            return Arc::clone(same);
        }
        let fresh = Arc::new(cfg);
        *last = Some(Arc::clone(&fresh));
        fresh
    })
}

/// The DHT node state machine.
pub struct Dht<A: DhtAddr = SocketAddrV4> {
    /// Shared with every node made with an equal configuration ([`shared_config`]).
    cfg: Arc<Config>,
    rng: super::entropy::WireRng,
    table: RoutingTable<A>,
    rpc: Rpc<A>,
    /// A `ThinVec` (one pointer): most simulated nodes run no lookup most of the time.
    lookups: ThinVec<Lookup<A>>,
    next_lookup: u64,
    store: PeerStore<A>,
    tokens: Tokens,
    transmits: VecDeque<Transmit<A>>,
    events: VecDeque<Event<A>>,
    stats: Stats,
    /// What joining the network keeps; boxed and made on first use: most of a million
    /// simulated nodes join by a perfect build and never bootstrap.
    join: Option<Box<Join<A>>>,
    /// Bootstrap routers: never entered into the table (bounded by `MAX_ROUTERS`). A
    /// `ThinVec` (one pointer): empty in nearly every simulated node.
    routers: ThinVec<A>,
    /// Lookups maintenance started to refresh a bucket (their queries count as refresh
    /// queries). At most one starts per tick and each ends within its budget, so this stays
    /// short; bounded by `MAX_REFRESH_LOOKUPS` all the same.
    refresh_lookups: ThinVec<LookupId>,
    next_maintenance: Time,
    verify_budget: TokenBucket,
    external_ip: Option<A>,
    limiter: RateLimiter<A::Ip>,
    ip_vote: bep42::ExternalIpVote<A::Ip>,
}

/// The join state: where to join from, and when to try again.
struct Join<A> {
    /// Bootstrap addresses, newest last (bounded by `MAX_ROUTERS`).
    addrs: Vec<A>,
    /// Contacts saved by an earlier run (bounded by `MAX_SAVED`).
    saved: Vec<NodeInfo<A>>,
    /// The join lookup running, if any.
    lookup: Option<LookupId>,
    /// When the last join started.
    last: Option<Time>,
    /// How long after `last` a join is retried while the table stays nearly empty.
    backoff: Duration,
}

/// The node lists one family's node can put in a response: what the other family's
/// [`Dht`] offers when a query's `want` (BEP 32) asks for its nodes.
pub trait NodeLists {
    /// Which `want` entry this family answers (`n4` or `n6`).
    fn family(&self) -> Want;
    /// Sets this family's `count` nodes closest to `target` in `r`.
    fn fill_nodes(&self, target: &Id, count: usize, now: Time, r: &mut Response);
}

impl<A: DhtAddr> NodeLists for Dht<A> {
    fn family(&self) -> Want {
        A::WANT
    }
    fn fill_nodes(&self, target: &Id, count: usize, now: Time, r: &mut Response) {
        A::set_nodes(r, self.table.closest(target, count, now));
    }
}

/// Housekeeping tick while buckets wait for refresh: one stale bucket is refreshed per tick
/// (as libtorrent and jech/dht do), so a table gone stale does not fire every bucket at once.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);
/// Refresh lookups tracked at most for the `refresh_queries` count.
const MAX_REFRESH_LOOKUPS: usize = 32;
/// Bootstrap routers remembered at most (they come from the command line and config).
const MAX_ROUTERS: usize = 64;
/// Saved contacts (from the state file) remembered at most as join seeds.
const MAX_SAVED: usize = 512;

impl<A: DhtAddr> Dht<A> {
    /// A node with `id` and configuration `cfg` whose randomness all derives from `seed`:
    /// runs repeat exactly, which the simulator and the tests need. Real nodes use
    /// [`Dht::with_entropy`] with [`Entropy::from_os`], so nobody can recompute their token
    /// key or transaction ids from a guessable seed.
    pub fn new(id: Id, cfg: Config, seed: u64, now: Time) -> Dht<A> {
        Dht::with_entropy(id, cfg, Entropy::from_seed(seed), now)
    }

    /// A node with `id` and configuration `cfg` drawing on `entropy`: the wire RNG
    /// (transaction ids, refresh targets) and the token key are separate streams.
    pub fn with_entropy(id: Id, cfg: Config, entropy: Entropy, now: Time) -> Dht<A> {
        let rng = entropy.wire;
        let tokens = Tokens::new(entropy.token_key, now, cfg.token_interval);
        let rpc = Rpc::new(entropy.tid_key);
        let verify_per_sec = u64::from(cfg.verify_pings_per_sec);
        let cfg_limits = cfg.rate_limits.clone();
        let mut table = RoutingTable::new(id, cfg.k, cfg.one_per_ip, now);
        table.set_bep42(cfg.bep42);
        Dht {
            table,
            store: PeerStore::new(),
            cfg: shared_config(cfg),
            rng,
            rpc,
            lookups: ThinVec::new(),
            next_lookup: 1,
            tokens,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            join: None,
            routers: ThinVec::new(),
            refresh_lookups: ThinVec::new(),
            next_maintenance: now + MAINTENANCE_EVERY,
            verify_budget: TokenBucket::new(verify_per_sec, verify_per_sec, now),
            external_ip: None,
            limiter: RateLimiter::new(cfg_limits),
            ip_vote: bep42::ExternalIpVote::default(),
        }
    }

    /// Our node id.
    pub fn id(&self) -> Id {
        self.table.own_id()
    }

    /// The join state, made on first use.
    fn join_mut(&mut self) -> &mut Join<A> {
        let backoff = self.cfg.bootstrap_retry;
        self.join.get_or_insert_with(|| {
            Box::new(Join {
                addrs: Vec::new(),
                saved: Vec::new(),
                lookup: None,
                last: None,
                backoff,
            })
        })
    }

    /// Whether `lookup` is the join lookup; if so it is over, and forgotten.
    fn end_join_lookup(&mut self, lookup: LookupId) -> bool {
        match self.join.as_deref_mut() {
            Some(j) if j.lookup == Some(lookup) => {
                j.lookup = None;
                true
            }
            _ => false,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The routing table, for status output and persistence.
    pub fn routing_table(&self) -> &RoutingTable<A> {
        &self.table
    }

    /// The peer store, for status output.
    pub fn store(&self) -> &PeerStore<A> {
        &self.store
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Our address as other nodes report it (`ip` key of responses), if any did.
    pub fn external_addr(&self) -> Option<A> {
        self.external_ip
    }

    /// Lookups still running.
    pub fn active_lookups(&self) -> usize {
        self.lookups.len()
    }

    /// Joins the network: a find_node lookup for our own id through `addrs` (bootstrap
    /// contacts), the saved contacts ([`Dht::add_saved_nodes`]) and whatever the table
    /// already holds. The addresses are remembered and retried while the table stays nearly
    /// empty. Those also named with [`Dht::add_routers`] never enter the routing table.
    pub fn bootstrap(&mut self, now: Time, addrs: &[A]) -> LookupId {
        self.add_bootstrap_addrs(addrs);
        let j = self.join_mut();
        j.last = Some(now);
        let bare = j.addrs.clone();
        let target = self.id();
        let lid = self.start_lookup(now, target, LookupKind::FindNode, &bare);
        self.join_mut().lookup = Some(lid);
        lid
    }

    /// Remembers bootstrap addresses without joining now: lookups fall back on them while
    /// the table is nearly empty (a short-lived `lookup` does not need a full join).
    pub fn add_bootstrap_addrs(&mut self, addrs: &[A]) {
        if addrs.is_empty() {
            return;
        }
        let known = &mut self.join_mut().addrs;
        for a in addrs {
            if !known.contains(a) {
                if known.len() >= MAX_ROUTERS {
                    // Keep the newest: a re-join passes contacts that are alive now.
                    known.remove(0);
                }
                known.push(*a);
            }
        }
    }

    /// Remembers contacts saved by an earlier run (with their ids, unlike routers): joins and
    /// lookups on a nearly empty table start from them, they enter the table when they
    /// answer, and they are saved again if this run never gets to know better ones (a start
    /// during an outage must not wipe the state file).
    pub fn add_saved_nodes(&mut self, nodes: &[NodeInfo<A>]) {
        if nodes.is_empty() {
            return;
        }
        let own = self.id();
        let saved = &mut self.join_mut().saved;
        for n in nodes {
            if saved.len() >= MAX_SAVED {
                break;
            }
            if n.id != own && !saved.iter().any(|s| s.id == n.id || s.addr == n.addr) {
                saved.push(*n);
            }
        }
    }

    /// Marks `addrs` as bootstrap routers (the public `router.bittorrent.com` kind): used to
    /// join like any bootstrap contact, but they only point the way and never enter the
    /// routing table (libtorrent's rule), so a handful of busy hosts do not end up in every
    /// node's table and every reply. Ordinary nodes given as bootstrap contacts do enter it.
    pub fn add_routers(&mut self, addrs: &[A]) {
        for a in addrs {
            if !self.routers.contains(a) {
                if self.routers.len() >= MAX_ROUTERS {
                    self.routers.remove(0);
                }
                self.routers.push(*a);
            }
        }
        self.add_bootstrap_addrs(addrs);
    }

    fn is_router(&self, addr: &A) -> bool {
        self.routers.contains(addr)
    }

    /// Puts `node` in the routing table as if it had just answered: for contacts the caller
    /// vouches for (the simulator's perfect tables; a table restored from a trusted source).
    /// Saved state from disk goes through [`Dht::add_saved_nodes`] instead, so dead contacts
    /// are weeded out by the join's queries.
    pub fn insert_node(&mut self, now: Time, node: NodeInfo<A>) -> Insert<A> {
        self.table.on_response(node, now)
    }

    /// Pings `addr` so it can enter the routing table if it answers.
    pub fn add_node(&mut self, now: Time, addr: A) {
        self.send_query(now, addr, None, Method::Ping, Purpose::Ping);
    }

    /// Starts a find_node lookup for `target`.
    pub fn find_node(&mut self, now: Time, target: Id) -> LookupId {
        self.start_lookup(now, target, LookupKind::FindNode, &[])
    }

    /// Starts a get_peers lookup; peers arrive as [`Event::Peers`] while it runs. With
    /// `announce`, announce_peer goes to the closest responders at the end.
    pub fn get_peers(
        &mut self,
        now: Time,
        info_hash: Id,
        announce: Option<AnnounceSpec>,
    ) -> LookupId {
        self.start_lookup(now, info_hash, LookupKind::GetPeers { announce }, &[])
    }

    /// The counters of a lookup still running (`None` once it ended or was cancelled): what
    /// the simulator reads when a lookup's first peer comes in, to count the queries it took
    /// to get there apart from those it sends until it completes.
    pub fn lookup_stats(&self, lookup: LookupId) -> Option<&LookupStats> {
        self.lookups
            .iter()
            .find(|l| l.id == lookup)
            .map(|l| &l.stats)
    }

    /// Abandons a lookup (its caller went away): no more queries, no announce, no event;
    /// late answers are ignored. Cancelling the join lets maintenance retry it.
    pub fn cancel(&mut self, lookup: LookupId) {
        self.lookups.retain(|l| l.id != lookup);
        self.refresh_lookups.retain(|l| *l != lookup);
        self.end_join_lookup(lookup);
    }

    fn start_lookup(&mut self, now: Time, target: Id, kind: LookupKind, extra: &[A]) -> LookupId {
        let lid = LookupId(self.next_lookup);
        self.next_lookup += 1;
        let mut seeds = self.table.closest(&target, self.cfg.k * 2, now);
        let mut bare: Vec<A> = extra.to_vec();
        if seeds.len() < self.cfg.k {
            // A nearly empty table: fall back on the saved contacts and the bootstrap
            // addresses.
            if let Some(j) = self.join.as_deref() {
                for n in &j.saved {
                    if !seeds.iter().any(|s| s.id == n.id || s.addr == n.addr) {
                        seeds.push(*n);
                    }
                }
                for a in &j.addrs {
                    if !bare.contains(a) {
                        bare.push(*a);
                    }
                }
            }
        }
        self.table.touch(&target, now);
        let params = LookupParams {
            k: self.cfg.k,
            alpha: self.cfg.alpha,
            own_id: self.id(),
            bep42: self.cfg.bep42,
            private_nodes: self.cfg.private_nodes,
            max_per_ip: self.cfg.lookup_max_per_ip,
            max_queries: self.cfg.lookup_max_queries,
            timeout: self.cfg.lookup_timeout,
            max_peers: self.cfg.lookup_max_peers,
        };
        let lookup = Lookup::new(lid, target, kind, params, now, &seeds, &bare);
        self.lookups.push(lookup);
        self.step_lookup(now, lid);
        lid
    }

    /// Sends what a lookup wants sent, and finishes it when it is done or out of budget.
    /// Called on every answer, error, widen and timeout of its queries, so a lookup past its
    /// deadline ends at the latest `widen_after` later (it always has a query in flight).
    fn step_lookup(&mut self, now: Time, lid: LookupId) {
        let Some(idx) = self.lookups.iter().position(|l| l.id == lid) else {
            return;
        };
        loop {
            let (target, kind, outgoing) = {
                let l = &mut self.lookups[idx];
                if l.expired(now) {
                    break;
                }
                (l.target, l.kind, l.next_queries())
            };
            if outgoing.is_empty() {
                break;
            }
            let method = match kind {
                LookupKind::FindNode => Method::FindNode { target },
                LookupKind::GetPeers { .. } => Method::GetPeers { info_hash: target },
            };
            let mut any_failed = false;
            let refresh = self.refresh_lookups.contains(&lid);
            for o in outgoing {
                if !self.send_query(now, o.addr, o.id, method.clone(), Purpose::Lookup(lid)) {
                    self.lookups[idx].on_failure(&o.addr);
                    any_failed = true;
                } else if refresh {
                    self.stats.refresh_queries += 1;
                }
            }
            if !any_failed {
                break;
            }
        }
        if self.lookups[idx].is_done(now) {
            let l = self.lookups.swap_remove(idx);
            self.finish_lookup(now, l);
        }
    }

    fn finish_lookup(&mut self, now: Time, l: Lookup<A>) {
        self.refresh_lookups.retain(|r| *r != l.id);
        // The lookup ranks BEP 42-verified nodes first (when BEP 42 applies), then by
        // distance: the announce goes preferably to nodes whose id matches their address.
        let closest = l.closest(self.cfg.k);
        let mut announced = 0;
        if let LookupKind::GetPeers {
            announce: Some(spec),
        } = l.kind
        {
            // The k best nodes that can store us: those without a token take no place.
            for (node, token) in l.announce_targets(self.cfg.k) {
                let method = Method::AnnouncePeer {
                    info_hash: l.target,
                    port: spec.port,
                    implied_port: spec.implied_port,
                    token,
                };
                if self.send_query(
                    now,
                    node.addr,
                    Some(node.id),
                    method,
                    Purpose::Announce(l.id),
                ) {
                    announced += 1;
                }
            }
        }
        if self.end_join_lookup(l.id) {
            // The own-id lookup filled the buckets near us; the farther ones that are not
            // full get one refresh query each, whose answer lists nodes to ping into them.
            // A lookup into each, as before, filled them no better at ~2x the queries (7
            // lookups and 83 queries against 1 and 64 for a join into 400 nodes; 34% fewer
            // datagrams in join-20k).
            let sparse: Vec<usize> = self
                .table
                .buckets()
                .iter()
                .enumerate()
                .take(self.table.buckets().len().saturating_sub(1))
                .filter(|(_, b)| b.entries.len() < self.cfg.k)
                .map(|(i, _)| i)
                .collect();
            for b in sparse {
                self.refresh_bucket(now, b);
            }
            self.events.push_back(Event::Bootstrapped {
                nodes: self.table.len(),
            });
        }
        self.events.push_back(Event::LookupDone {
            lookup: l.id,
            target: l.target,
            stats: l.stats.clone(),
            elapsed: now.since(l.started),
            closest,
            announced,
        });
    }

    fn send_query(
        &mut self,
        now: Time,
        addr: A,
        id: Option<Id>,
        method: Method,
        purpose: Purpose,
    ) -> bool {
        let Some(tid) = self.rpc.register(Outstanding {
            addr,
            id,
            sent: now,
            purpose,
        }) else {
            return false;
        };
        let msg = Message {
            tid: tid.to_vec(),
            version: Some(CLIENT_VERSION.to_vec()),
            ip: None,
            read_only: self.cfg.read_only,
            body: Body::Query(Query {
                id: self.id(),
                method,
                want: Want::NONE,
            }),
        };
        self.stats.queries_out += 1;
        self.push_transmit(addr, msg.encode());
        true
    }

    fn push_transmit(&mut self, to: A, data: Vec<u8>) {
        self.stats.datagrams_out += 1;
        self.transmits.push_back(Transmit { to, data });
    }

    /// Sends a response or an error reply, if the global reply budget holds its bytes (the
    /// IP and UDP headers included: a flood of tiny replies costs the victim's link those
    /// too): every byte we send because someone else asked counts, so spoofed queries cannot
    /// make us reflect more than the budget.
    fn reply(&mut self, now: Time, to: A, tid: Vec<u8>, body: Body) {
        let msg = Message {
            tid,
            version: Some(CLIENT_VERSION.to_vec()),
            ip: Some(to.to_socket_addr()),
            read_only: false,
            body,
        };
        let data = msg.encode();
        if self
            .limiter
            .allow_reply(now, data.len() + udp_overhead(&to))
        {
            self.push_transmit(to, data);
        }
    }

    /// Counts another node's view of our address; once a quorum agrees on a public address
    /// our id does not match, take a BEP 42 id for it and re-centre the table.
    /// Votes age out ([`bep42::ExternalIpVote`]), so a changed address is followed; after a
    /// new id, a join lookup for it tells our new neighbours at once (instead of them
    /// learning it over the next refresh rounds).
    fn on_external_ip(&mut self, now: Time, voter: A::Ip, ours: A) {
        if bep42::is_exempt_ip(&A::ip_addr(&voter))
            && !bep42::is_exempt_ip(&A::ip_addr(&ours.ip_of()))
        {
            // A local peer cannot vouch for a public address.
            return;
        }
        if let Some(ip) = self.ip_vote.vote(voter, ours.ip_of(), now) {
            self.external_ip = Some(A::from_parts(ip, ours.port_of()));
            if self.cfg.bep42_derive_id
                && self.cfg.bep42 != Bep42Mode::Off
                && !bep42::is_valid_ip(&self.id(), &A::ip_addr(&ip))
            {
                let id = bep42::id_for_ip_addr(&A::ip_addr(&ip), &mut self.rng);
                self.table.recentre(id, now);
                self.events.push_back(Event::IdChanged { id, external: ip });
                self.find_node(now, id);
            }
        } else if self.external_ip.is_none() {
            self.external_ip = Some(ours);
        }
    }

    /// Feeds one received datagram.
    ///
    /// Answers and errors matching one of our outstanding queries (random transaction id and
    /// the exact address asked) bypass the per-IP limiter and never count toward a ban: an
    /// off-path spoofer flooding from, say, the bootstrap router's address can get that IP
    /// banned for its own packets, but cannot guess our ids, so the router's genuine answers
    /// still arrive.
    pub fn handle_datagram(&mut self, now: Time, from: A, data: &[u8]) {
        self.handle_datagram_with(now, from, data, None);
    }

    /// Feeds one received datagram, with the node of the other address family beside this
    /// one (dual stack, BEP 32): a query whose `want` asks for that family's nodes is
    /// answered from `other`'s table.
    pub fn handle_datagram_with(
        &mut self,
        now: Time,
        from: A,
        data: &[u8],
        other: Option<&dyn NodeLists>,
    ) {
        // Only a datagram from an address we queried can be an answer of ours, exempt from
        // the per-IP limiter; anything else meets the limiter before we spend a decode on it.
        let awaited = self.rpc.awaits(&from);
        if !awaited && !self.limiter.allow_packet(from.ip_of(), now) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        let decoded = Message::decode(data);
        let ours = awaited
            && matches!(&decoded, Ok(m) if !matches!(m.body, Body::Query(_))
                && self.rpc.matches(&m.tid, &from));
        if awaited && !ours && !self.limiter.allow_packet(from.ip_of(), now) {
            self.stats.dropped_rate_limited += 1;
            return;
        }
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => {
                self.stats.malformed_in += 1;
                if let (Some(tid), false) = (e.query_tid, self.cfg.read_only) {
                    self.reply(
                        now,
                        from,
                        tid,
                        Body::Error(KrpcError {
                            code: ErrorCode::Protocol,
                            message: e.reason.as_bytes().to_vec(),
                        }),
                    );
                }
                return;
            }
        };
        match msg.body {
            Body::Query(q) => self.handle_query(now, from, msg.tid, msg.read_only, q, other),
            Body::Response(r) => {
                let ip = msg.ip.and_then(A::from_socket_addr);
                self.handle_response(now, from, &msg.tid, ip, r)
            }
            Body::Error(_) => self.handle_error(now, from, &msg.tid),
        }
    }

    fn handle_query(
        &mut self,
        now: Time,
        from: A,
        tid: Vec<u8>,
        ro: bool,
        q: Query,
        other: Option<&dyn NodeLists>,
    ) {
        self.stats.queries_in += 1;
        if self.cfg.read_only || !self.limiter.reply_budget_left(now) {
            return;
        }
        let known = ro || self.table.on_query(&q.id, from, now);
        let querier = q.id;
        let body = match q.method {
            Method::Ping => Body::Response(Response {
                id: self.id(),
                ..Response::default()
            }),
            Method::FindNode { target } => {
                Body::Response(self.node_lists(&target, q.want, now, other))
            }
            Method::GetPeers { info_hash } => {
                let values = self
                    .store
                    .peers(&info_hash, self.cfg.max_values, now, &mut self.rng);
                let mut r = self.node_lists(&info_hash, q.want, now, other);
                A::set_values(&mut r, values);
                let ip: IpAddr = from.ip_of().into();
                r.token = Some(self.tokens.token_for(&ip, &info_hash).to_vec());
                Body::Response(r)
            }
            Method::AnnouncePeer {
                info_hash,
                port,
                implied_port,
                token,
            } => {
                if !self.tokens.check(&token, &from.ip_of().into(), &info_hash) {
                    Body::Error(KrpcError {
                        code: ErrorCode::Protocol,
                        message: b"bad token".to_vec(),
                    })
                } else if !implied_port && port == 0 {
                    Body::Error(KrpcError {
                        code: ErrorCode::Protocol,
                        message: b"bad port".to_vec(),
                    })
                } else {
                    let port = if implied_port { from.port_of() } else { port };
                    let peer = A::from_parts(from.ip_of(), port);
                    // Refused at capacity: not stored, but answered normally all the same.
                    // An error (202) would make libtorrent count us as a failing node and
                    // drop us from its table, while the announcer stores itself on its
                    // other closest nodes anyway.
                    match self.store.announce(&self.cfg.store, info_hash, peer, now) {
                        Ok(_) => self.stats.announces_in += 1,
                        Err(_) => self.stats.announces_refused += 1,
                    }
                    Body::Response(Response {
                        id: self.id(),
                        ..Response::default()
                    })
                }
            }
            Method::Unknown(_) => Body::Error(KrpcError {
                code: ErrorCode::MethodUnknown,
                message: b"method unknown".to_vec(),
            }),
        };
        self.reply(now, from, tid, body);
        if !known {
            self.maybe_verify(now, from, querier);
        }
    }

    /// A find_node / get_peers answer's node lists: this family's unless `want` (BEP 32)
    /// names only the other, plus the other family's from `other` when asked for. A list
    /// given is always present, even empty (BEP 5 replies always carry `nodes`).
    fn node_lists(
        &self,
        target: &Id,
        want: Want,
        now: Time,
        other: Option<&dyn NodeLists>,
    ) -> Response {
        let mut r = Response {
            id: self.id(),
            ..Response::default()
        };
        let asks = |fam: Want| (want.n4 && fam.n4) || (want.n6 && fam.n6);
        if want.is_empty() || asks(A::WANT) {
            A::set_nodes(&mut r, self.table.closest(target, self.cfg.k, now));
        }
        if let Some(o) = other.filter(|o| asks(o.family())) {
            o.fill_nodes(target, self.cfg.k, now, &mut r);
        }
        r
    }

    /// An unknown node queried us: if it could enter the table, ping it (answers prove the
    /// address is real). Budgeted, so a flood of queriers cannot make us flood pings.
    fn maybe_verify(&mut self, now: Time, from: A, id: Id) {
        // A spoofed source must not aim our pings at addresses that cannot be nodes (0/8,
        // multicast, reserved, port 0) nor, when local nodes are denied, at our own LAN.
        if !martian::acceptable_for(&from, &from.ip_of(), self.cfg.private_nodes) {
            return;
        }
        if !self.table.has_room_for(&id, now) {
            return;
        }
        if !self.verify_budget.try_take(1, now) {
            return;
        }
        // A stranger's query made us send this ping, so it is paid from the reply budget
        // like an answer would be: spoofed queries cannot add pings on top of the budget.
        if !self
            .limiter
            .allow_reply(now, self.ping_len() + udp_overhead(&from))
        {
            return;
        }
        self.send_query(now, from, Some(id), Method::Ping, Purpose::Ping);
    }

    /// Bytes of one of our pings on the wire (its size does not depend on the transaction
    /// id's value, only on its length).
    fn ping_len(&self) -> usize {
        Message {
            tid: vec![0; super::rpc::TID_LEN],
            version: Some(CLIENT_VERSION.to_vec()),
            ip: None,
            read_only: self.cfg.read_only,
            body: Body::Query(Query {
                id: self.id(),
                method: Method::Ping,
                want: Want::NONE,
            }),
        }
        .encode()
        .len()
    }

    fn handle_response(&mut self, now: Time, from: A, tid: &[u8], ip: Option<A>, r: Response) {
        let Some(q) = self.rpc.take(tid, &from) else {
            self.stats.unsolicited_in += 1;
            return;
        };
        self.stats.responses_in += 1;
        if let Some(ours) = ip {
            self.on_external_ip(now, from.ip_of(), ours);
        }
        if q.id.is_some_and(|x| x != r.id) {
            // Someone else answers at that address: the entry we asked did not (it left,
            // or a responder listed a live node's address under an id it never had).
            self.entry_failed(now, &q);
        }
        let node = NodeInfo {
            id: r.id,
            addr: from,
        };
        if !self.is_router(&from) {
            if let Insert::PingFirst(stale) = self.table.on_response(node, now) {
                self.send_query(now, stale.addr, Some(stale.id), Method::Ping, Purpose::Ping);
            }
        }
        match q.purpose {
            Purpose::Lookup(lid) => {
                let Some(l) = self.lookups.iter_mut().find(|l| l.id == lid) else {
                    return;
                };
                let nodes = A::nodes_of(&r).unwrap_or(&[]);
                let fresh = l.on_response(from, r.id, nodes, A::values_of(&r), r.token.clone());
                if !fresh.is_empty() {
                    self.events.push_back(Event::Peers {
                        lookup: lid,
                        peers: fresh,
                    });
                }
                self.step_lookup(now, lid);
            }
            Purpose::Announce(lid) => self.events.push_back(Event::AnnounceAcked {
                lookup: lid,
                node: from,
            }),
            Purpose::Refresh { .. } => {
                let nodes = A::nodes_of(&r).unwrap_or(&[]);
                self.ping_listed(now, from, nodes);
            }
            Purpose::Ping => {}
        }
    }

    fn handle_error(&mut self, now: Time, from: A, tid: &[u8]) {
        let Some(q) = self.rpc.take(tid, &from) else {
            self.stats.unsolicited_in += 1;
            return;
        };
        self.stats.responses_in += 1;
        if let Some(id) = q.id {
            // An error is an answer: the node is alive (and a liveness ping is settled).
            self.table.on_error_reply(&id, from, now);
        }
        if let Purpose::Lookup(lid) = q.purpose {
            if let Some(l) = self.lookups.iter_mut().find(|l| l.id == lid) {
                l.on_failure(&from);
            }
            self.step_lookup(now, lid);
        }
    }

    /// The driver could not send `data` to `to` (a local error: no route, no buffer space).
    /// That is our failure, not the remote's: the query is dropped without charging the node
    /// (a network blip must not empty the routing table), and a lookup moves on at once.
    pub fn on_send_error(&mut self, now: Time, to: A, data: &[u8]) {
        let Ok(msg) = Message::decode(data) else {
            return;
        };
        if !matches!(msg.body, Body::Query(_)) {
            return;
        }
        let Some(q) = self.rpc.take(&msg.tid, &to) else {
            return;
        };
        if let Some(id) = q.id {
            self.table.on_send_failed(&id, to);
        }
        if let Purpose::Lookup(lid) = q.purpose {
            if let Some(l) = self.lookups.iter_mut().find(|l| l.id == lid) {
                l.on_failure(&to);
            }
            self.step_lookup(now, lid);
        }
    }

    /// Runs everything due at `now`: widening and timeouts of queries, token rotation, peer
    /// expiry, bucket refresh and bootstrap retries.
    pub fn handle_timeout(&mut self, now: Time) {
        for q in self.rpc.due_widen(now, self.cfg.widen_after) {
            if let Purpose::Lookup(lid) = q.purpose {
                if let Some(l) = self.lookups.iter_mut().find(|l| l.id == lid) {
                    l.on_slow(&q.addr);
                }
                self.step_lookup(now, lid);
            }
        }
        for q in self.rpc.due_timeouts(now, self.cfg.query_timeout) {
            self.stats.timeouts += 1;
            self.entry_failed(now, &q);
            if let Purpose::Lookup(lid) = q.purpose {
                if let Some(l) = self.lookups.iter_mut().find(|l| l.id == lid) {
                    l.on_failure(&q.addr);
                }
                self.step_lookup(now, lid);
            }
        }
        if now >= self.next_maintenance {
            self.maintenance(now);
        }
    }

    /// Refreshes bucket `b` with one find_node for a random id in its range, sent to the entry
    /// we heard from longest ago (libtorrent's `send_single_refresh`, jech/dht's bucket
    /// refresh): its answer keeps the bucket fresh and checks that entry is alive, and the
    /// nodes it lists are pinged when the bucket has room. A full lookup per stale bucket, as
    /// before, cost ~16 queries for a bucket whose k slots were already full: most of a
    /// large network's traffic. A bucket with no entry to ask asks the known node closest to
    /// the id instead: any node outside the bucket holds its own bucket for that range, so
    /// its answer lists up to k nodes there (one query and the pings that verify them, where
    /// a lookup cost ~16 queries and filled the bucket no better). Only a node that knows
    /// nobody at all starts a lookup.
    fn refresh_bucket(&mut self, now: Time, b: usize) {
        let target = self.id().random_in_bucket(b, &mut self.rng);
        let ask = self
            .table
            .refresh_candidate(b)
            .or_else(|| self.table.closest(&target, 1, now).first().copied());
        // Bucket indices are below 161 (one per bit of the id, and the last).
        let bucket = u8::try_from(b).unwrap_or(u8::MAX);
        if let Some(n) = ask {
            // Fresh until the answer or the timeout says more: one query per bucket per
            // refresh interval, not one per tick while it is out.
            self.table.touch(&target, now);
            let method = Method::FindNode { target };
            if self.send_query(now, n.addr, Some(n.id), method, Purpose::Refresh { bucket }) {
                self.stats.refresh_queries += 1;
            }
            return;
        }
        let before = self.stats.queries_out;
        let lid = self.find_node(now, target);
        // Its first round went out inside `find_node`; later rounds are counted as they are
        // sent.
        self.stats.refresh_queries += self.stats.queries_out - before;
        if self.refresh_lookups.len() < MAX_REFRESH_LOOKUPS
            && self.lookups.iter().any(|l| l.id == lid)
        {
            self.refresh_lookups.push(lid);
        }
    }

    /// Pings the nodes a refresh answer listed that could enter the table (a bucket with
    /// room): an answer proves the address, and the node then enters through every check
    /// of `on_response`. Nothing listed is stored unproven. At most `k` per answer, one per
    /// IP, none to an address already asked or in the table, and none for full buckets (the
    /// steady state). Not paid from the budget for pings of unknown queriers: a stranger
    /// can send us any number of queries, but refresh answers come only to our own refresh
    /// queries (one per tick, one per sparse bucket at a join), so a lying answerer can aim
    /// at most `k` pings per refresh of ours. At a join, a dozen answers arrive at once, and
    /// that budget (20) turned most of their pings away (join-20k: 58 entries per table
    /// against 92 without it).
    fn ping_listed(&mut self, now: Time, from: A, nodes: &[NodeInfo<A>]) {
        let mut seen: Vec<A::Ip> = Vec::new();
        for n in nodes.iter().take(self.cfg.k) {
            let ip = n.addr.ip_of();
            if n.id == self.id()
                || seen.contains(&ip)
                || !martian::acceptable_for(&n.addr, &from.ip_of(), self.cfg.private_nodes)
                || self.table.get(&n.id).is_some()
                || self.table.entries_at_ip(&ip) > 0
                || self.rpc.awaits(&n.addr)
                || !self.table.has_room_for(&n.id, now)
            {
                continue;
            }
            seen.push(ip);
            self.send_query(now, n.addr, None, Method::Ping, Purpose::Ping);
        }
    }

    /// The table entry query `q` went to did not answer as itself (a timeout, or an answer
    /// at its address under another id): one failure for that entry (id *and* address), a
    /// second ping if it was a liveness check, and a refresh that failed is retried.
    fn entry_failed(&mut self, now: Time, q: &Outstanding<A>) {
        let Some(id) = q.id else {
            return;
        };
        match self.table.on_timeout(&id, q.addr, now) {
            TimeoutOutcome::PingAgain(n) | TimeoutOutcome::Replaced(n) => {
                self.send_query(now, n.addr, Some(n.id), Method::Ping, Purpose::Ping);
            }
            TimeoutOutcome::Unknown | TimeoutOutcome::Counted | TimeoutOutcome::Bad => {}
        }
        if let Purpose::Refresh { bucket } = q.purpose {
            self.table
                .refresh_failed(usize::from(bucket), now, self.cfg.refresh_after);
            // Asked again at the next tick, not at the next scheduled housekeeping.
            self.next_maintenance = self.next_maintenance.min(now + MAINTENANCE_EVERY);
        }
    }

    fn maintenance(&mut self, now: Time) {
        self.tokens.maybe_rotate(now, self.cfg.token_interval);
        self.store.expire(now);
        // Refresh the stalest bucket, one per tick, whatever else is running: busy lookups
        // must not starve refresh, and a table gone stale must not fire every bucket at once.
        if !self.table.is_empty() {
            if let Some(b) = self.table.stalest_bucket(now, self.cfg.refresh_after) {
                self.refresh_bucket(now, b);
            }
        }
        // A young or partitioned network: join again, backing off, until the table fills.
        let table_full = self.table.len() >= self.cfg.k;
        let retry = self.cfg.bootstrap_retry;
        let mut rejoin = false;
        if let Some(j) = self.join.as_deref_mut() {
            if table_full {
                j.backoff = retry;
            }
            let due = j.last.is_some_and(|t| now.since(t) >= j.backoff);
            if due && j.lookup.is_none() && !table_full {
                j.backoff = (j.backoff * 2).min(Duration::from_secs(300));
                rejoin = true;
            }
        }
        if rejoin {
            self.bootstrap(now, &[]);
        }
        // Give back what a burst (join, many lookups) grew, once idle: a million simulated
        // nodes keep only what they use.
        if self.lookups.is_empty() {
            self.lookups.shrink_to_fit();
            self.table.shrink_to_fit();
        }
        // Empty queues give everything back: an idle node holds no buffer at all.
        self.transmits.shrink_to(0);
        self.events.shrink_to(0);
        self.rpc.shrink_if_idle();
        self.limiter.forget_idle(now);
        self.next_maintenance = self.next_maintenance_after(now);
    }

    /// When housekeeping is next needed: the token rotation, the first bucket due for refresh,
    /// a join retry, peer expiry — not a fixed tick, so idle nodes (a million in the simulator)
    /// cost nothing between deadlines.
    fn next_maintenance_after(&self, now: Time) -> Time {
        let soon = now + Duration::from_secs(1);
        let mut next = self.tokens.rotates_at();
        if !self.table.is_empty() {
            if let Some(due) = self.table.next_refresh_due(self.cfg.refresh_after) {
                // Another bucket already due waits for the next tick.
                next = next.min(due.max(now + MAINTENANCE_EVERY));
            }
        }
        if self.store.peer_count() > 0 {
            next = next.min(now + Duration::from_secs(60));
        }
        if let Some(j) = self.join.as_deref() {
            if self.table.len() < self.cfg.k && !j.addrs.is_empty() {
                if let Some(t) = j.last {
                    next = next.min(t + j.backoff);
                }
            }
        }
        next.max(soon)
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit<A>> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event<A>> {
        self.events.pop_front()
    }

    /// When [`Dht::handle_timeout`] should next be called.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        let q = self
            .rpc
            .next_deadline(self.cfg.widen_after, self.cfg.query_timeout);
        Some(q.map_or(self.next_maintenance, |t| t.min(self.next_maintenance)))
    }

    /// Nodes worth saving for the next start, with their ids: every table entry that is not
    /// bad, best first. When fewer than `k` are left (an outage made them all fail, or the
    /// node never got online), the last known good table is kept: bad entries that once
    /// answered, then the contacts this run was started with. A restart pings them anyway.
    pub fn saved_nodes(&self, now: Time) -> Vec<NodeInfo<A>> {
        let mut out: Vec<NodeInfo<A>> = Vec::new();
        for want in [NodeState::Good, NodeState::Questionable] {
            out.extend(
                self.table
                    .iter()
                    .filter(|e| e.answered && e.state(now) == want)
                    .map(|e| e.node),
            );
        }
        if out.len() < self.cfg.k {
            let mut bad: Vec<_> = self
                .table
                .iter()
                .filter(|e| e.answered && e.state(now) == NodeState::Bad)
                .collect();
            bad.sort_by_key(|e| std::cmp::Reverse(e.last_response));
            out.extend(bad.into_iter().map(|e| e.node));
            for n in self.join.iter().flat_map(|j| &j.saved) {
                if !out.iter().any(|o| o.id == n.id || o.addr == n.addr) {
                    out.push(*n);
                }
            }
        }
        out
    }
}

/// IP and UDP header bytes of a datagram to `to`: 20 + 8 over IPv4, 40 + 8 over IPv6.
fn udp_overhead<A: DhtAddr>(to: &A) -> usize {
    if to.to_socket_addr().is_ipv4() {
        28
    } else {
        48
    }
}
