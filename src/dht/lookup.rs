//! One iterative Kademlia lookup (find_node or get_peers).
//!
//! Candidates are kept sorted by distance to the target. Up to `alpha` queries are in flight;
//! a query still unanswered after the short "widen" delay stops counting against `alpha`, so
//! one more candidate is queried, but its late answer is still used. The lookup ends when the
//! `k` closest candidates it has seen have all answered or failed.
//!
//! The lookup itself sends nothing: `next_queries` says whom to query, and the node (`dht`)
//! turns that into datagrams and feeds answers and timeouts back.

use std::net::SocketAddrV4;

use crate::id::Id;
use crate::krpc::{DhtAddr, NodeInfo};

use super::bep42::{self, Bep42Mode};
use super::time::Time;

/// Identifies a lookup across events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LookupId(pub u64);

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

#[derive(Clone, Debug, PartialEq, Eq)]
enum CandState {
    Fresh,
    InFlight { slow: bool },
    Responded { token: Option<Vec<u8>> },
    Failed,
}

#[derive(Clone, Debug)]
struct Candidate<A> {
    /// Unknown for bootstrap addresses until they answer.
    id: Option<Id>,
    addr: A,
    distance: Id,
    /// Hops from our own table: 1 for nodes we knew, n+1 for nodes learned from a hop-n node.
    depth: u8,
    state: CandState,
    /// BEP 42: its id is not valid for its (public) address. Such candidates rank after
    /// every verified one, so nodes that claim ids next to any target cannot crowd out the
    /// truly closest verified nodes (and cannot end the lookup).
    unverified: bool,
}

impl<A> Candidate<A> {
    fn rank(&self) -> (bool, Id) {
        (self.unverified, self.distance)
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
pub struct Lookup<A = SocketAddrV4> {
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
    k: usize,
    alpha: usize,
    candidates: Vec<Candidate<A>>,
    max_candidates: usize,
    seen_peers: std::collections::HashSet<A>,
    bep42: Bep42Mode,
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
    /// (bootstrap routers, saved nodes).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: LookupId,
        target: Id,
        kind: LookupKind,
        k: usize,
        alpha: usize,
        now: Time,
        seeds: &[NodeInfo<A>],
        bare: &[A],
    ) -> Lookup<A> {
        let mut l = Lookup {
            id,
            target,
            kind,
            started: now,
            stats: LookupStats::default(),
            k,
            alpha: alpha.max(1),
            candidates: Vec::new(),
            max_candidates: k * 8,
            seen_peers: Default::default(),
            bep42: Bep42Mode::Off,
        };
        for n in seeds {
            l.add_candidate(Some(n.id), n.addr, 1);
        }
        for a in bare {
            l.add_candidate(None, *a, 1);
        }
        l
    }

    /// Applies BEP 42 to the candidates (`Prefer`: unverified ones rank last; `Enforce`:
    /// they are not queried at all). Call before any answer arrives.
    pub fn with_bep42(mut self, mode: Bep42Mode) -> Lookup<A> {
        self.bep42 = mode;
        if mode == Bep42Mode::Off {
            return self;
        }
        for c in self.candidates.iter_mut() {
            c.unverified = c.id.is_some_and(|i| !bep42::is_valid_for(&i, &c.addr));
        }
        if mode == Bep42Mode::Enforce {
            self.candidates.retain(|c| !c.unverified);
        }
        self.candidates.sort_by_key(|c| c.rank());
        self
    }

    fn add_candidate(&mut self, id: Option<Id>, addr: A, depth: u8) {
        if self
            .candidates
            .iter()
            .any(|c| c.addr == addr || (id.is_some() && c.id == id))
        {
            return;
        }
        // Unknown ids sort last: we cannot say how close they are.
        let distance = id.map_or(Id([0xff; 20]), |i| i.distance(&self.target));
        let unverified =
            self.bep42 != Bep42Mode::Off && id.is_some_and(|i| !bep42::is_valid_for(&i, &addr));
        if unverified && self.bep42 == Bep42Mode::Enforce {
            return;
        }
        let pos = self
            .candidates
            .partition_point(|c| c.rank() <= (unverified, distance));
        if pos >= self.max_candidates {
            return;
        }
        self.candidates.insert(
            pos,
            Candidate {
                id,
                addr,
                distance,
                depth,
                state: CandState::Fresh,
                unverified,
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

    /// The queries to send now: fresh candidates among the closest, while fewer than `alpha`
    /// non-slow queries are outstanding. Marks them in flight.
    pub fn next_queries(&mut self) -> Vec<Outgoing<A>> {
        let mut out = Vec::new();
        let mut active = self.active();
        let mut settled = 0;
        for c in self.candidates.iter_mut() {
            if active >= self.alpha || settled >= self.k {
                break;
            }
            match c.state {
                CandState::Fresh => {
                    c.state = CandState::InFlight { slow: false };
                    active += 1;
                    settled += 1;
                    out.push(Outgoing {
                        addr: c.addr,
                        id: c.id,
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

    /// An answer from `from`: records its token, adds the nodes it returned, and returns the
    /// peers not seen before in this lookup (so the caller can emit them at once).
    pub fn on_response(
        &mut self,
        from: A,
        responder: Id,
        nodes: &[NodeInfo<A>],
        values: &[A],
        token: Option<Vec<u8>>,
    ) -> Vec<A> {
        let target = self.target;
        let check = self.bep42 != Bep42Mode::Off;
        let Some(c) = self.find(&from) else {
            return Vec::new();
        };
        // A duplicate answer is ignored; a late one after a timeout is still welcome, once.
        if matches!(c.state, CandState::Responded { .. }) {
            return Vec::new();
        }
        c.state = CandState::Responded { token };
        if c.id.is_none() {
            c.id = Some(responder);
            c.distance = responder.distance(&target);
            c.unverified = check && !bep42::is_valid_for(&responder, &from);
        }
        let depth = c.depth;
        self.candidates.sort_by_key(|c| c.rank());
        self.stats.responses += 1;
        self.stats.max_depth = self.stats.max_depth.max(depth);
        for n in nodes {
            self.add_candidate(Some(n.id), n.addr, depth.saturating_add(1));
        }
        let fresh: Vec<A> = values
            .iter()
            .filter(|p| self.seen_peers.insert(**p))
            .copied()
            .collect();
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
    /// to query and nothing is in flight.
    pub fn is_done(&self) -> bool {
        let mut responded = 0;
        for c in &self.candidates {
            match c.state {
                CandState::Responded { .. } => {
                    responded += 1;
                    if responded >= self.k {
                        return true;
                    }
                }
                CandState::Failed => {}
                CandState::Fresh | CandState::InFlight { .. } => return false,
            }
        }
        true
    }

    /// The `2k` closest nodes that answered, closest first, with the token each gave (for
    /// announce_peer; the caller picks `k` of them).
    pub fn closest_responded(&self) -> Vec<(NodeInfo<A>, Option<Vec<u8>>)> {
        self.candidates
            .iter()
            .filter_map(|c| match (&c.state, c.id) {
                (CandState::Responded { token }, Some(id)) => {
                    Some((NodeInfo { id, addr: c.addr }, token.clone()))
                }
                _ => None,
            })
            .take(self.k * 2)
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
            8,
            3,
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
            2,
            4,
            Time(0),
            &seeds,
            &[],
        );
        let q = l.next_queries();
        assert_eq!(q.len(), 2, "never more than k unsettled near the head");
        assert!(!l.is_done());
        l.on_failure(&n(1).addr);
        assert!(!l.is_done());
        // n3 gets queried to replace the failed n1.
        let q = l.next_queries();
        assert_eq!(q[0].addr, n(3).addr);
        l.on_response(n(2).addr, n(2).id, &[], &[], None);
        assert!(!l.is_done());
        l.on_response(n(3).addr, n(3).id, &[], &[], Some(b"tok".to_vec()));
        assert!(l.is_done(), "2 closest non-failed answered");
        let c = l.closest_responded();
        assert_eq!(c.len(), 2);
        assert_eq!(c[1].1.as_deref(), Some(&b"tok"[..]));
    }

    #[test]
    fn closer_nodes_from_answers_are_followed_and_peers_deduplicated() {
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::GetPeers { announce: None },
            8,
            1,
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
        assert!(l.is_done());
        assert_eq!(l.stats.max_depth, 2);
    }

    #[test]
    fn bootstrap_addresses_learn_their_ids() {
        let addr = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 99), 1);
        let mut l = Lookup::new(
            LookupId(1),
            Id::ZERO,
            LookupKind::FindNode,
            8,
            4,
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
                8,
                1,
                Time(0),
                &[sybil, honest],
                &[],
            )
            .with_bep42(mode)
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
        assert!(enforce.is_done());
    }
}
