//! One iterative Kademlia lookup (find_node or get_peers).
//!
//! Candidates are kept sorted by trust, then distance to the target. Up to `alpha` queries
//! are in flight; a query still unanswered after the short "widen" delay stops counting
//! against `alpha`, so one more candidate is queried, but its late answer is still used. The
//! lookup ends when the `k` closest candidates it has seen have all answered or failed, or
//! when its budget (queries sent, wall time) is spent.
//!
//! Answers are not taken on trust: a listed node is dropped if it carries our own id, an
//! address the martian filter refuses, or an IP that already has its share of candidates;
//! a node that answers under another id than it was listed with is ranked by the id it
//! answered with, so a liar cannot make a real node look close.
//!
//! Candidates are one per address; an id may be listed at up to `MAX_PER_ID` addresses (one
//! per lister), so a liar listing the closest ids at dead or junk addresses cannot hide the
//! real nodes with those ids that honest nodes list later. The first address that answers
//! under an id wins it: the other listings of that id not yet queried are dropped, and later
//! listings of it are ignored. A listing alone never takes an id from a node that answers.
//!
//! The lookup itself sends nothing: `next_queries` says whom to query, and the node (`dht`)
//! turns that into datagrams and feeds answers and timeouts back.

use std::collections::HashSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::id::Id;
use crate::krpc::{DhtAddr, NodeInfo};

use super::bep42::{self, Bep42Mode};
use super::martian::{self, PrivateNodes};
use super::time::Time;

/// Identifies a lookup across events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

/// Live (not failed) candidates one unconfirmed id may have, at different addresses and
/// from different listers: a liar's listing then leaves room for the real node's.
const MAX_PER_ID: usize = 2;

/// What the lookup is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupKind {
    /// Find the nodes closest to a target (bootstrap, bucket refresh).
    FindNode,
    /// Find peers of an info-hash; with `announce`, announce ourselves afterwards.
    GetPeers {
        /// Port to announce (`Some`) once the lookup ends; `implied` uses our UDP port.
        announce: Option<AnnounceSpec>,
    },
}

/// What to announce when a get_peers lookup finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnnounceSpec {
    /// TCP port peers should connect to.
    pub port: u16,
    /// Ask nodes to use our UDP source port instead.
    pub implied_port: bool,
}

/// What a lookup trusts and how far it may go; the node fills it from its `Config`, so one
/// place holds the tunables.
#[derive(Clone, Debug)]
pub struct LookupParams {
    /// Closest answers that end the lookup (bucket size).
    pub k: usize,
    /// Queries in flight.
    pub alpha: usize,
    /// Our own id: a listed node carrying it is never queried (it is us, or a liar).
    pub own_id: Id,
    /// BEP 42: rank (`Prefer`) or drop (`Enforce`) nodes whose id does not fit their address.
    pub bep42: Bep42Mode,
    /// Which listed loopback and private addresses may be queried.
    pub private_nodes: PrivateNodes,
    /// Candidates per public IP address.
    pub max_per_ip: usize,
    /// Queries sent at most.
    pub max_queries: u32,
    /// Wall time at most.
    pub timeout: Duration,
    /// Distinct peers reported at most (get_peers).
    pub max_peers: usize,
}

impl LookupParams {
    /// Parameters with the node defaults, for `k` and `alpha` (tests, tools).
    pub fn new(k: usize, alpha: usize, own_id: Id) -> LookupParams {
        LookupParams {
            k,
            alpha,
            own_id,
            bep42: Bep42Mode::Off,
            private_nodes: PrivateNodes::SameScope,
            max_per_ip: 2,
            max_queries: 256,
            timeout: Duration::from_secs(20),
            max_peers: 1000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CandState {
    Fresh,
    InFlight {
        slow: bool,
    },
    /// Answered; its token, if it gave one, is in `Lookup::tokens`.
    Responded,
    Failed,
}

/// How much BEP 42 vouches for a candidate; candidates rank by this first, so nodes that
/// claim ids next to any target cannot crowd out the truly closest verified nodes (and
/// cannot end the lookup).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Trust {
    /// Its id fits its public address (or BEP 42 is off, or the id is not known yet).
    Verified,
    /// A loopback or private address: BEP 42 cannot say anything about it.
    Local,
    /// Its id does not fit its public address.
    Unverified,
}

fn trust<A: DhtAddr>(mode: Bep42Mode, id: Option<Id>, addr: &A) -> Trust {
    match id {
        _ if mode == Bep42Mode::Off => Trust::Verified,
        None => Trust::Verified,
        Some(_) if bep42::is_exempt_ip(&A::ip_addr(&addr.ip_of())) => Trust::Local,
        Some(i) if bep42::is_valid_for(&i, addr) => Trust::Verified,
        Some(_) => Trust::Unverified,
    }
}

/// Kept small (no id beside the distance, no token): a lookup scans its candidates several
/// times per answer, and in a simulation of many nodes each answer finds them out of cache.
#[derive(Clone, Debug)]
struct Candidate<A: DhtAddr> {
    /// Its id XOR the target; the id is known (`known`) unless it is a bootstrap address
    /// that has not answered yet (then all ones: it sorts last). Once it answered, the
    /// distance of the id it answered with.
    distance: Id,
    known: bool,
    addr: A,
    /// Hops from our own table: 1 for nodes we knew, n+1 for nodes learned from a hop-n node.
    depth: u8,
    state: CandState,
    trust: Trust,
    /// IP of the responder that listed it; `None` for the seeds we started from.
    listed_by: Option<A::Ip>,
}

impl<A: DhtAddr> Candidate<A> {
    fn rank(&self) -> (Trust, Id) {
        (self.trust, self.distance)
    }

    /// Whether its id is the one at `distance` from the target.
    fn has_distance(&self, distance: &Id) -> bool {
        self.known && self.distance == *distance
    }

    fn id(&self, target: &Id) -> Option<Id> {
        self.known.then(|| self.distance.distance(target))
    }
}

/// Counters a finished lookup reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookupStats {
    /// Queries sent.
    pub queried: u32,
    /// Answers received.
    pub responses: u32,
    /// Queries that timed out.
    pub timeouts: u32,
    /// Distinct peers found (get_peers).
    pub peers: u32,
    /// Depth (hop count) of the answer that yielded the first peer.
    pub first_peer_hops: Option<u8>,
    /// Greatest depth reached.
    pub max_depth: u8,
}

/// State of one lookup.
pub struct Lookup<A: DhtAddr = SocketAddrV4> {
    /// Its id.
    pub id: LookupId,
    /// The target id or info-hash.
    pub target: Id,
    /// find_node or get_peers.
    pub kind: LookupKind,
    /// When it began.
    pub started: Time,
    /// Counters.
    pub stats: LookupStats,
    p: LookupParams,
    candidates: Vec<Candidate<A>>,
    max_candidates: usize,
    /// Tokens of the candidates that answered with one, one per address (at most one per
    /// query sent, so bounded by the query budget).
    tokens: Vec<(A, Vec<u8>)>,
    seen_peers: HashSet<A>,
}

/// A query the lookup wants sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing<A = SocketAddrV4> {
    /// Where to send it.
    pub addr: A,
    /// Expected responder id, if known.
    pub id: Option<Id>,
}

impl<A: DhtAddr> Lookup<A> {
    /// A new lookup seeded with known nodes (from the routing table) and bare addresses
    /// (bootstrap routers, saved nodes: the caller chose them, so the martian filter does
    /// not apply to them).
    pub fn new(
        id: LookupId,
        target: Id,
        kind: LookupKind,
        params: LookupParams,
        now: Time,
        seeds: &[NodeInfo<A>],
        bare: &[A],
    ) -> Lookup<A> {
        let mut params = params;
        params.alpha = params.alpha.max(1);
        let mut l = Lookup {
            id,
            target,
            kind,
            started: now,
            stats: LookupStats::default(),
            max_candidates: params.k * 8,
            p: params,
            candidates: Vec::new(),
            tokens: Vec::new(),
            seen_peers: HashSet::new(),
        };
        for n in seeds {
            l.add_candidate(Some(n.id), n.addr, 1, None);
        }
        for a in bare {
            l.add_candidate(None, *a, 1, None);
        }
        l
    }

    /// Adds a candidate unless it is us, at an address already listed, refused by the
    /// martian filter (when listed by `listed_by`), over its IP's share, or too far to
    /// matter. Its id may already be listed (`MAX_PER_ID` live listings, one per lister),
    /// unless a node answered under it.
    fn add_candidate(&mut self, id: Option<Id>, addr: A, depth: u8, listed_by: Option<&A::Ip>) {
        if id == Some(self.p.own_id) {
            return;
        }
        if let Some(from) = listed_by {
            if !martian::acceptable_for(&addr, from, self.p.private_nodes) {
                return;
            }
        }
        // Unknown ids sort last: we cannot say how close they are.
        let distance = id.map_or(Id([0xff; 20]), |i| i.distance(&self.target));
        // One pass over the candidates (this runs for every node of every answer).
        let ip = addr.ip_of();
        let (mut live, mut same_ip) = (0, 0);
        for c in &self.candidates {
            if c.addr == addr {
                return;
            }
            if c.addr.ip_of() == ip {
                same_ip += 1;
            }
            if id.is_some() && c.has_distance(&distance) {
                match c.state {
                    // A node answered under this id: it is taken.
                    CandState::Responded => return,
                    // A dead listing holds no place.
                    CandState::Failed => {}
                    // One place per lister: a liar cannot fill them all alone.
                    _ if c.listed_by.as_ref() == listed_by => return,
                    _ => live += 1,
                }
            }
        }
        if live >= MAX_PER_ID {
            return;
        }
        if same_ip >= self.p.max_per_ip
            && martian::scope_ip(&A::ip_addr(&ip)) == martian::Scope::Public
        {
            return;
        }
        let trust = trust(self.p.bep42, id, &addr);
        if trust == Trust::Unverified && self.p.bep42 == Bep42Mode::Enforce {
            return;
        }
        let pos = self
            .candidates
            .partition_point(|c| c.rank() <= (trust, distance));
        if pos >= self.max_candidates {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                distance,
                known: id.is_some(),
                addr,
                depth,
                state: CandState::Fresh,
                trust,
                listed_by: listed_by.copied(),
            },
        );
        if self.candidates.len() > self.max_candidates {
            // Drop the farthest candidate that is not waiting for an answer.
            if let Some(p) = self
                .candidates
                .iter()
                .rposition(|c| !matches!(c.state, CandState::InFlight { .. }))
            {
                self.candidates.remove(p);
            }
        }
    }

    fn active(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| c.state == CandState::InFlight { slow: false })
            .count()
    }

    fn queries_spent(&self) -> bool {
        self.stats.queried >= self.p.max_queries
    }

    /// Whether the lookup has run out of wall time at `now`.
    pub fn expired(&self, now: Time) -> bool {
        now.since(self.started) >= self.p.timeout
    }

    /// The queries to send now: fresh candidates among the closest, while fewer than `alpha`
    /// non-slow queries are outstanding and the query budget lasts. Marks them in flight.
    pub fn next_queries(&mut self) -> Vec<Outgoing<A>> {
        let mut out = Vec::new();
        let mut active = self.active();
        let mut settled = 0;
        let budget = self.p.max_queries.saturating_sub(self.stats.queried) as usize;
        for c in self.candidates.iter_mut() {
            if active >= self.p.alpha || settled >= self.p.k || out.len() >= budget {
                break;
            }
            match c.state {
                CandState::Fresh => {
                    c.state = CandState::InFlight { slow: false };
                    active += 1;
                    settled += 1;
                    out.push(Outgoing {
                        addr: c.addr,
                        id: c.id(&self.target),
                    });
                }
                CandState::Failed => {}
                _ => settled += 1,
            }
        }
        self.stats.queried += out.len() as u32;
        out
    }

    fn find(&mut self, addr: &A) -> Option<&mut Candidate<A>> {
        self.candidates.iter_mut().find(|c| c.addr == *addr)
    }

    /// An answer from `from` claiming id `responder`: records its token, adds the nodes it
    /// returned, and returns the peers not seen before in this lookup (so the caller can
    /// emit them at once). A responder whose id differs from the one it was listed with is
    /// re-ranked by the id it answered with, and wins that id: other listings of it not yet
    /// queried are dropped. One answering with our id, or with an id another address has
    /// already answered under, counts as failed; an id that was only listed elsewhere does
    /// not.
    pub fn on_response(
        &mut self,
        from: A,
        responder: Id,
        nodes: &[NodeInfo<A>],
        values: &[A],
        token: Option<Vec<u8>>,
    ) -> Vec<A> {
        let target = self.target;
        let mode = self.p.bep42;
        let at_distance = responder.distance(&target);
        // One pass: the responder's candidate, and whether another address already
        // answered under its id.
        let mut clash = responder == self.p.own_id;
        let mut at = None;
        for (i, c) in self.candidates.iter().enumerate() {
            if c.addr == from {
                at = at.or(Some(i));
            } else if !clash && c.state == CandState::Responded && c.has_distance(&at_distance) {
                clash = true;
            }
        }
        let Some(c) = at.and_then(|i| self.candidates.get_mut(i)) else {
            return Vec::new();
        };
        // A duplicate answer is ignored; a late one after a timeout is still welcome, once.
        if c.state == CandState::Responded {
            return Vec::new();
        }
        let trust = trust(mode, Some(responder), &from);
        let enforced = mode == Bep42Mode::Enforce && trust == Trust::Unverified;
        let renamed = !c.has_distance(&at_distance);
        if clash || (renamed && c.known && enforced) {
            if matches!(c.state, CandState::InFlight { .. } | CandState::Failed) {
                c.state = CandState::Failed;
            }
            return Vec::new();
        }
        if renamed {
            c.known = true;
            c.distance = at_distance;
            c.trust = trust;
        }
        c.state = CandState::Responded;
        self.tokens.retain(|(a, _)| *a != from);
        if let Some(t) = token {
            self.tokens.push((from, t));
        }
        let depth = c.depth;
        // It won the id: listings of it elsewhere that were not queried yet go (those in
        // flight stay, and fail if they answer under it).
        self.candidates.retain(|c| {
            c.addr == from || !c.has_distance(&at_distance) || c.state != CandState::Fresh
        });
        // Only a renamed candidate can be out of place (the list is kept sorted otherwise).
        if renamed {
            self.candidates.sort_by_key(|c| c.rank());
        }
        self.stats.responses += 1;
        self.stats.max_depth = self.stats.max_depth.max(depth);
        for n in nodes {
            self.add_candidate(
                Some(n.id),
                n.addr,
                depth.saturating_add(1),
                Some(&from.ip_of()),
            );
        }
        let policy = self.p.private_nodes;
        let mut fresh = Vec::new();
        for p in values {
            if self.seen_peers.len() >= self.p.max_peers {
                break;
            }
            if martian::acceptable_for(p, &from.ip_of(), policy) && self.seen_peers.insert(*p) {
                fresh.push(*p);
            }
        }
        if !fresh.is_empty() && self.stats.first_peer_hops.is_none() {
            self.stats.first_peer_hops = Some(depth);
        }
        self.stats.peers += fresh.len() as u32;
        fresh
    }

    /// The query to `addr` passed the widen delay: stop counting it against `alpha`.
    pub fn on_slow(&mut self, addr: &A) {
        if let Some(c) = self.find(addr) {
            if c.state == (CandState::InFlight { slow: false }) {
                c.state = CandState::InFlight { slow: true };
            }
        }
    }

    /// The query to `addr` timed out (or was answered with an error).
    pub fn on_failure(&mut self, addr: &A) {
        if let Some(c) = self.find(addr) {
            if matches!(c.state, CandState::InFlight { .. }) {
                c.state = CandState::Failed;
                self.stats.timeouts += 1;
            }
        }
    }

    /// True when the `k` closest non-failed candidates have all answered, or nothing is left
    /// to query and nothing is in flight, or the budget is spent: the wall time at `now`, or
    /// every query allowed sent and answered or failed.
    pub fn is_done(&self, now: Time) -> bool {
        if self.expired(now) || (self.queries_spent() && self.in_flight() == 0) {
            return true;
        }
        let mut responded = 0;
        for c in &self.candidates {
            match c.state {
                CandState::Responded => {
                    responded += 1;
                    if responded >= self.p.k {
                        return true;
                    }
                }
                CandState::Failed => {}
                CandState::Fresh | CandState::InFlight { .. } => return false,
            }
        }
        true
    }

    fn responded(&self) -> impl Iterator<Item = NodeInfo<A>> + '_ {
        self.candidates
            .iter()
            .filter_map(|c| match (c.state, c.id(&self.target)) {
                (CandState::Responded, Some(id)) => Some(NodeInfo { id, addr: c.addr }),
                _ => None,
            })
    }

    /// The token `addr` gave in its answer.
    fn token_of(&self, addr: &A) -> Option<&Vec<u8>> {
        self.tokens.iter().find(|(a, _)| a == addr).map(|(_, t)| t)
    }

    /// The `n` best nodes that answered (BEP 42-verified first when it applies, then
    /// closest first).
    pub fn closest(&self, n: usize) -> Vec<NodeInfo<A>> {
        self.responded().take(n).collect()
    }

    /// Where to announce: the `n` best nodes that answered *with a token*, with it. Nodes
    /// that gave none cannot store us, so they do not take a place.
    pub fn announce_targets(&self, n: usize) -> Vec<(NodeInfo<A>, Vec<u8>)> {
        self.responded()
            .filter_map(|node| self.token_of(&node.addr).map(|t| (node, t.clone())))
            .take(n)
            .collect()
    }

    /// Queries still outstanding (including slow ones).
    pub fn in_flight(&self) -> usize {
        self.candidates
            .iter()
            .filter(|c| matches!(c.state, CandState::InFlight { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const OWN: Id = Id([0xee; 20]);

    fn n(b: u8) -> NodeInfo {
        let mut id = [0u8; 20];
        id[0] = b;
        NodeInfo {
            id: Id(id),
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, b), 1000),
        }
    }

    #[test]
    fn queries_alpha_closest_first_and_widens_on_slow() {
        let seeds: Vec<NodeInfo> = (1..=10).map(n).collect();
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams::new(8, 3, OWN),
            Time(0),
            &seeds,
            &[],
        );
        let first = l.next_queries();
        assert_eq!(
            first.iter().map(|o| o.addr).collect::<Vec<_>>(),
            vec![n(1).addr, n(2).addr, n(3).addr]
        );
        assert!(l.next_queries().is_empty(), "alpha reached");
        l.on_slow(&n(1).addr);
        let widened = l.next_queries();
        assert_eq!(widened.len(), 1);
        assert_eq!(widened[0].addr, n(4).addr);
        // The slow node's late answer is still used.
        l.on_response(n(1).addr, n(1).id, &[], &[], None);
        assert_eq!(l.stats.responses, 1);
    }

    #[test]
    fn ends_when_k_closest_answered_or_failed() {
        let seeds: Vec<NodeInfo> = (1..=4).map(n).collect();
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams::new(2, 4, OWN),
            Time(0),
            &seeds,
            &[],
        );
        let q = l.next_queries();
        assert_eq!(q.len(), 2, "never more than k unsettled near the head");
        assert!(!l.is_done(Time(0)));
        l.on_failure(&n(1).addr);
        assert!(!l.is_done(Time(0)));
        // n3 gets queried to replace the failed n1.
        let q = l.next_queries();
        assert_eq!(q[0].addr, n(3).addr);
        l.on_response(n(2).addr, n(2).id, &[], &[], None);
        assert!(!l.is_done(Time(0)));
        l.on_response(n(3).addr, n(3).id, &[], &[], Some(b"tok".to_vec()));
        assert!(l.is_done(Time(0)), "2 closest non-failed answered");
        assert_eq!(l.closest(8).len(), 2);
        let t = l.announce_targets(8);
        assert_eq!(t.len(), 1, "only n3 gave a token");
        assert_eq!(t[0], (n(3), b"tok".to_vec()));
    }

    #[test]
    fn closer_nodes_from_answers_are_followed_and_peers_deduplicated() {
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::GetPeers { announce: None },
            LookupParams::new(8, 1, OWN),
            Time(0),
            &[n(50)],
            &[],
        );
        assert_eq!(l.next_queries()[0].addr, n(50).addr);
        let p = SocketAddrV4::new(Ipv4Addr::new(1, 1, 1, 1), 1);
        assert_eq!(
            l.on_response(n(50).addr, n(50).id, &[n(2)], &[p], None),
            vec![p]
        );
        assert_eq!(l.stats.first_peer_hops, Some(1));
        assert_eq!(l.next_queries()[0].addr, n(2).addr);
        assert!(l
            .on_response(n(2).addr, n(2).id, &[], &[p], None)
            .is_empty());
        assert!(l.is_done(Time(0)));
        assert_eq!(l.stats.max_depth, 2);
    }

    #[test]
    fn bootstrap_addresses_learn_their_ids() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 1);
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams::new(8, 4, OWN),
            Time(0),
            &[],
            &[addr],
        );
        let q = l.next_queries();
        assert_eq!(q, vec![Outgoing { addr, id: None }]);
        l.on_response(addr, n(9).id, &[n(3)], &[], None);
        assert_eq!(l.next_queries()[0].addr, n(3).addr);
    }

    #[test]
    fn bep42_unverified_candidates_rank_after_verified_ones() {
        use rand::SeedableRng;
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let target = Id::ZERO;
        // A Sybil claiming the id right next to the target from a public address.
        let sybil = NodeInfo {
            id: Id([0; 20]),
            addr: SocketAddrV4::new(Ipv4Addr::new(93, 1, 1, 1), 1),
        };
        let ip = Ipv4Addr::new(84, 124, 73, 14);
        let honest = NodeInfo {
            id: super::bep42::id_for_ip(&ip, &mut rng),
            addr: SocketAddrV4::new(ip, 1),
        };
        let mk = |mode| {
            Lookup::new(
                LookupId(1),
                target,
                LookupKind::FindNode,
                LookupParams {
                    bep42: mode,
                    ..LookupParams::new(8, 1, OWN)
                },
                Time(0),
                &[sybil, honest],
                &[],
            )
        };
        assert_eq!(mk(Bep42Mode::Off).next_queries()[0].addr, sybil.addr);
        assert_eq!(mk(Bep42Mode::Prefer).next_queries()[0].addr, honest.addr);
        let mut enforce = mk(Bep42Mode::Enforce);
        assert_eq!(enforce.next_queries()[0].addr, honest.addr);
        enforce.on_failure(&honest.addr);
        assert!(
            enforce.next_queries().is_empty(),
            "the Sybil is never queried"
        );
        assert!(enforce.is_done(Time(0)));
    }

    #[test]
    fn an_answer_under_an_answered_or_our_own_id_counts_as_failed() {
        let seeds = [n(1), n(2), n(3)];
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams::new(8, 3, OWN),
            Time(0),
            &seeds,
            &[],
        );
        assert_eq!(l.next_queries().len(), 3);
        l.on_response(n(1).addr, n(1).id, &[], &[], None);
        // n2's address answers as n1 after n1 did, n3's as us: neither is believed.
        l.on_response(n(2).addr, n(1).id, &[n(9)], &[], None);
        l.on_response(n(3).addr, OWN, &[n(9)], &[], None);
        assert_eq!(l.stats.responses, 1);
        assert!(
            l.next_queries().is_empty(),
            "their node lists were not used"
        );
        assert!(l.is_done(Time(0)));
        assert_eq!(l.closest(8), vec![n(1)]);
    }

    #[test]
    fn a_listing_does_not_take_an_id_from_the_node_that_answers_under_it() {
        // A liar lists the id a bootstrap node really has at a dead address, first.
        let liar = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 200), 1);
        let boot = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 1);
        let real = n(1);
        let dead = NodeInfo {
            id: real.id,
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, 1), 1),
        };
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams::new(8, 1, OWN),
            Time(0),
            &[],
            &[liar, boot],
        );
        assert_eq!(l.next_queries()[0].addr, liar);
        l.on_response(liar, n(0x70).id, &[dead], &[], None);
        assert_eq!(l.next_queries()[0].addr, dead.addr);
        l.on_slow(&dead.addr);
        assert_eq!(l.next_queries()[0].addr, boot);
        // The bootstrap node answers as the id the dead listing carries: it wins the id.
        l.on_response(boot, real.id, &[], &[], None);
        assert_eq!(l.stats.responses, 2);
        l.on_failure(&dead.addr);
        assert!(l.is_done(Time(0)));
        assert_eq!(
            l.closest(8)[0],
            NodeInfo {
                id: real.id,
                addr: boot
            }
        );
    }

    #[test]
    fn an_id_is_kept_at_a_second_address_but_once_per_lister_and_not_once_answered() {
        let lister = |b: u8| SocketAddrV4::new(Ipv4Addr::new(10, 0, 5, b), 1);
        let at = |b: u8| SocketAddrV4::new(Ipv4Addr::new(10, 0, 9, b), 1);
        let x = n(1).id;
        let listed = |b: u8| NodeInfo { id: x, addr: at(b) };
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams::new(8, 8, OWN),
            Time(0),
            &[],
            &[lister(1), lister(2), lister(3)],
        );
        assert_eq!(l.next_queries().len(), 3);
        // One lister gets one place for x, however many addresses it lists it at.
        l.on_response(lister(1), n(0x71).id, &[listed(1), listed(2)], &[], None);
        // A second lister gets the second place; a third finds both taken.
        l.on_response(lister(2), n(0x72).id, &[listed(3)], &[], None);
        l.on_response(lister(3), n(0x73).id, &[listed(4)], &[], None);
        let q: Vec<SocketAddrV4> = l.next_queries().iter().map(|o| o.addr).collect();
        assert_eq!(q, vec![at(1), at(3)]);
        // at(1) is dead; at(3) answers as x and wins it: later listings of x are ignored.
        l.on_failure(&at(1));
        l.on_response(at(3), x, &[], &[], None);
        let again = SocketAddrV4::new(Ipv4Addr::new(10, 0, 5, 9), 1);
        l.add_candidate(Some(x), again, 2, Some(&Ipv4Addr::new(10, 0, 5, 4)));
        assert!(l.next_queries().is_empty());
        assert!(l.is_done(Time(0)));
    }

    #[test]
    fn the_query_budget_ends_a_lookup_once_its_answers_are_in() {
        let seeds: Vec<NodeInfo> = (1..=10).map(n).collect();
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams {
                max_queries: 2,
                ..LookupParams::new(8, 4, OWN)
            },
            Time(0),
            &seeds,
            &[],
        );
        assert_eq!(l.next_queries().len(), 2);
        assert!(!l.is_done(Time(0)), "answers still due");
        l.on_response(n(1).addr, n(1).id, &[], &[], None);
        l.on_failure(&n(2).addr);
        assert!(l.next_queries().is_empty());
        assert!(l.is_done(Time(0)));
        let late = Time(0) + Duration::from_secs(20);
        let mut m = Lookup::new(
            LookupId(2),
            Id::ZERO,
            LookupKind::FindNode,
            LookupParams::new(8, 4, OWN),
            Time(0),
            &seeds,
            &[],
        );
        m.next_queries();
        assert!(!m.is_done(Time(0)));
        assert!(m.is_done(late), "out of wall time");
    }
}
