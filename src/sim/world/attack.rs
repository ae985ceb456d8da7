//! The lying nodes: which slots lie and how, and their scripted answers to queries.
//! Attackers run no DHT core; they answer from their id, the scenario and a hash.

use std::net::SocketAddrV4;

use crate::dht::Transmit;
use crate::id::Id;
use crate::krpc::{Body, ErrorCode, KrpcError, Message, Method, NodeInfo, Query, Response, Want};
use crate::sim::model::mix64;
use crate::sim::scenario::{AttackSpec, Behaviour};

use super::shard::Shard;
use super::{pick_contacts, secs, Core, Lie, NodeEv, Shared, World};

/// The transaction id of an attacker's own queries (it never reads the answers).
const PROBE_TID: &[u8] = b"lq";

/// Bits of the target an attacker's claimed id shares: far closer than any honest node.
const CLAIM_PREFIX_BITS: usize = 64;

impl Lie {
    /// What slot `i` does under `spec`: `None` for an honest node. A hash of the slot and
    /// the seed decides, so the choice takes no RNG draw and does not move other values.
    pub(super) fn of_slot(spec: &AttackSpec, seed: u64, i: u32) -> Option<Lie> {
        if spec.fraction <= 0.0 {
            return None;
        }
        let salt = mix64(seed ^ 0x7379_6269_6c00_0000);
        let u = (mix64(salt ^ u64::from(i)) >> 11) as f64 / (1u64 << 53) as f64;
        (u < spec.fraction).then(|| Lie::of_behaviour(spec.behaviour, i, seed))
    }

    /// The lie of behaviour `b` for slot `i`: `mixed` picks one of the four by a hash.
    fn of_behaviour(b: Behaviour, i: u32, seed: u64) -> Lie {
        match b {
            Behaviour::BogusNodes => Lie::BogusNodes,
            Behaviour::ClaimClose => Lie::ClaimClose,
            Behaviour::Drop => Lie::Drop,
            Behaviour::BadTokens => Lie::BadTokens,
            Behaviour::Mixed => match mix64(seed ^ 0x6d69_7865_6400_0000 ^ u64::from(i)) % 4 {
                0 => Lie::BogusNodes,
                1 => Lie::ClaimClose,
                2 => Lie::Drop,
                _ => Lie::BadTokens,
            },
        }
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

impl World<'_> {
    /// Whether slot `i` lies (wherever its node lives now).
    #[cfg(test)]
    pub(super) fn is_liar_slot(&self, i: u32) -> bool {
        self.node(i).lie().is_some()
    }

    /// Counts the liars and builds what their answers draw on: the `claim_close`
    /// colluders and, when some hand out bad tokens, the sorted honest ids.
    pub(super) fn index_liars(&mut self) {
        let lies = || self.nodes.iter().map(|nd| nd.lie());
        self.liars = lies().flatten().count() as u32;
        self.sh.colluders = (0..self.sh.n)
            .zip(lies())
            .filter(|(_, l)| *l == Some(Lie::ClaimClose))
            .map(|(i, _)| i)
            .collect();
        if lies().any(|l| l == Some(Lie::BadTokens)) {
            let mut hs: Vec<(Id, u32)> = (0..self.sh.n)
                .zip(&self.nodes)
                .filter(|(_, nd)| matches!(nd.core, Core::Honest(_)))
                .map(|(i, nd)| (nd.id(), i))
                .collect();
            hs.sort_unstable();
            self.sh.honest_sorted = hs;
        }
    }
}

impl Shard {
    /// A lying node's answer to a datagram (scripted: attackers run no DHT core).
    pub(super) fn attacker_reply(&mut self, sh: &Shared, from: u32, me: u32, data: &[u8]) {
        let Some(lie) = self.node(me).lie() else {
            return;
        };
        if lie == Lie::Drop {
            return;
        }
        let Ok(msg) = Message::decode(data) else {
            return;
        };
        let Body::Query(q) = msg.body else {
            return;
        };
        let target = match q.method {
            Method::Ping => None,
            Method::FindNode { target } => Some(target),
            Method::GetPeers { info_hash } => Some(info_hash),
            Method::AnnouncePeer { info_hash, .. } => {
                let body = self.announce_answer(me, lie, &info_hash);
                self.attacker_send(sh, me, from, msg.tid, body);
                return;
            }
            Method::Unknown(_) => return,
        };
        let r = self.query_answer(sh, me, lie, target);
        self.attacker_send(sh, me, from, msg.tid, Body::Response(r));
    }

    /// The answer to an announce: refused with a bad token, else accepted and forgotten.
    fn announce_answer(&self, me: u32, lie: Lie, info_hash: &Id) -> Body {
        if lie == Lie::BadTokens {
            return Body::Error(KrpcError {
                code: ErrorCode::Protocol,
                message: b"bad token".to_vec(),
            });
        }
        let id = if lie == Lie::ClaimClose {
            id_near(info_hash, u64::from(me), 0)
        } else {
            self.node(me).id()
        };
        Body::Response(Response {
            id,
            ..Response::default()
        })
    }

    /// The answer to a ping (no `target`), find_node or get_peers.
    fn query_answer(&self, sh: &Shared, me: u32, lie: Lie, target: Option<Id>) -> Response {
        let who = u64::from(me);
        let mut r = Response {
            id: self.node(me).id(),
            ..Response::default()
        };
        let Some(t) = target else {
            return r;
        };
        r.token = Some(mix64(who ^ 0x746f_6b00).to_be_bytes()[..4].to_vec());
        match lie {
            Lie::BogusNodes => r.nodes = Some(bogus_nodes(who, &t)),
            Lie::ClaimClose => {
                r.id = id_near(&t, who, 0);
                r.nodes = colluders_near(sh, me, &t, &r.id);
            }
            // bad_tokens (drop never gets here): the truly closest honest nodes.
            Lie::BadTokens | Lie::Drop => r.nodes = Some(closest_honest(sh, &t)),
        }
        r
    }

    /// A lying node makes itself known the way a joining node does: find_node for its own
    /// id to a few random online nodes (picked from its own stream), and queues the next
    /// round (bootstrap join; attackers of a perfect build are in tables already).
    pub(super) fn attacker_probe(&mut self, sh: &Shared, me: u32) {
        let nd = self.node_mut(me);
        let id = nd.id();
        let count = sh.sc.join.bootstrap_nodes.max(1);
        let contacts = pick_contacts(&sh.online, &sh.addrs, count, &mut nd.rng);
        for to in contacts.iter().filter_map(|a| sh.addrs.node_of(a, sh.n)) {
            let body = Body::Query(Query {
                id,
                method: Method::FindNode { target: id },
                want: Want::default(),
            });
            self.attacker_send(sh, me, to, PROBE_TID.to_vec(), body);
        }
        let every = sh.sc.attack.query_every_s;
        if every > 0.0 {
            let at = self.now + secs(every);
            self.push_own(at, me, NodeEv::Probe);
        }
    }

    fn attacker_send(&mut self, sh: &Shared, me: u32, to: u32, tid: Vec<u8>, body: Body) {
        let is_query = matches!(body, Body::Query(_));
        let m = Message {
            tid,
            version: None,
            // Answers tell the querier its address (BEP 42); queries do not.
            ip: (!is_query).then(|| sh.addrs.addr_of(to).into()),
            read_only: false,
            body,
        };
        let t = Transmit {
            to: sh.addrs.addr_of(to),
            data: m.encode(),
        };
        self.send(sh, me, t);
    }
}

/// Up to 8 other `claim_close` attackers, each under an id next to `t` (`None` when no
/// other colluder was picked, as an honest node with nothing to say would answer).
fn colluders_near(sh: &Shared, me: u32, t: &Id, claimed: &Id) -> Option<Vec<NodeInfo>> {
    let who = u64::from(me);
    let c = sh.colluders.len() as u64;
    let mut nodes = None;
    for j in 0..8u64.min(c) {
        let pick = sh.colluders[(mix64(who ^ (j << 48) ^ claimed.0[19] as u64) % c) as usize];
        if pick != me {
            nodes.get_or_insert_with(Vec::new).push(NodeInfo {
                id: id_near(t, u64::from(pick), 0),
                addr: sh.addrs.addr_of(pick),
            });
        }
    }
    nodes
}

/// The 8 honest nodes of the initial network closest to `t`.
fn closest_honest(sh: &Shared, t: &Id) -> Vec<NodeInfo> {
    let hs = &sh.honest_sorted;
    let p = hs.partition_point(|(id, _)| id < t);
    let lo = p.saturating_sub(16);
    let hi = (p + 16).min(hs.len());
    let mut near: Vec<(Id, u32)> = hs[lo..hi].to_vec();
    near.sort_by_key(|(id, _)| id.distance(t));
    near.iter()
        .take(8)
        .map(|&(id, j)| NodeInfo {
            id,
            addr: sh.addrs.addr_of(j),
        })
        .collect()
}

/// 8 nodes that do not exist, with ids next to `t`: 10/8 like every simulated node, but on
/// ports nobody listens on.
fn bogus_nodes(who: u64, t: &Id) -> Vec<NodeInfo> {
    let th = mix64(u64::from_le_bytes(t.0[..8].try_into().unwrap_or_default()));
    (0..8u64)
        .map(|j| {
            let h = mix64(who ^ (j << 40) ^ th);
            let ip = 0x0A00_0000 | (h as u32 & 0x00ff_ffff);
            let port = 1024 + ((h >> 32) as u16 % 5000);
            NodeInfo {
                id: id_near(t, h, 1),
                addr: SocketAddrV4::new(ip.into(), port),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::progress::ProgressUpdate;
    use crate::sim::scenario::Scenario;
    use crate::sim::world::US_PER_S;

    /// Honest table entries that name an attacker, after 150 s of a bootstrap network
    /// with 10% attackers querying every `every` seconds.
    fn liars_in_tables(every: f64) -> (usize, usize) {
        let toml = format!(
            "name = \"t\"\nnodes = 600\n[join]\nduration_s = 30.0\nrefresh_after_join_s = 20.0\n\
             [attack]\nfraction = 0.1\nbehaviour = \"bogus_nodes\"\nquery_every_s = {every}\n"
        );
        let sc = Scenario::from_toml_str(&toml).expect("scenario parses");
        let mut p = |_: ProgressUpdate| {};
        let mut w = World::new(&sc, 1, &mut p);
        w.schedule_arrivals();
        w.cut_into_shards();
        // No workload: run the network alone until then.
        w.last_lookup_at = 150 * US_PER_S;
        w.event_loop();
        let (mut liars, mut all) = (0, 0);
        for s in &w.shards {
            for (_, nd) in s.iter() {
                let Some(d) = nd.dht() else { continue };
                for e in d.routing_table().iter() {
                    all += 1;
                    let j = w.sh.addrs.node_of(&e.node.addr, w.sh.n);
                    liars += usize::from(j.is_some_and(|j| w.is_liar_slot(j)));
                }
            }
        }
        (liars, all)
    }

    #[test]
    fn attackers_that_join_through_the_protocol_end_up_in_honest_tables() {
        let (liars, all) = liars_in_tables(60.0);
        assert!(all > 5_000, "{all} entries");
        assert!(liars > all / 100, "{liars} of {all} entries are attackers");
        // Querying only when they arrive, fewer honest nodes meet them.
        let (once, _) = liars_in_tables(0.0);
        assert!(once > 0 && once < liars, "{once} vs {liars}");
    }
}
