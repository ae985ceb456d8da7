//! Lookups against scripted responders: the node under test runs with fake time, and every
//! query it sends is answered (or not) by a closure playing the rest of the network, so each
//! test can stage one lie a remote node tells and check what the lookup makes of it.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::*;
use crate::id::Id;
use crate::krpc::{Body, Message, Method, NodeInfo, Response};

/// A query the node sent.
#[derive(Clone, Debug)]
struct Sent {
    to: SocketAddrV4,
    tid: Vec<u8>,
    method: Method,
}

/// One node and the scripted world around it.
struct Bench {
    node: Dht,
    now: Time,
    pending: Vec<Sent>,
    sent: Vec<Sent>,
    events: Vec<Event>,
}

impl Bench {
    fn new(id: Id, cfg: Config) -> Bench {
        Bench {
            node: Dht::new(id, cfg, 7, Time(0)),
            now: Time(0),
            pending: Vec::new(),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn collect(&mut self) {
        while let Some(t) = self.node.poll_transmit() {
            if let Ok(Message {
                tid,
                body: Body::Query(q),
                ..
            }) = Message::decode(&t.data)
            {
                let s = Sent {
                    to: t.to,
                    tid,
                    method: q.method,
                };
                self.sent.push(s.clone());
                self.pending.push(s);
            }
        }
        while let Some(e) = self.node.poll_event() {
            self.events.push(e);
        }
    }

    /// `rounds` rounds of `step_ms` each: every query sent in the previous round is answered
    /// as `script` says (`None`: silence), then the node's timers run.
    fn run(
        &mut self,
        step_ms: u64,
        rounds: usize,
        mut script: impl FnMut(&Sent) -> Option<Response>,
    ) {
        self.collect();
        for _ in 0..rounds {
            self.now = self.now + Duration::from_millis(step_ms);
            let now = self.now;
            for s in std::mem::take(&mut self.pending) {
                if let Some(r) = script(&s) {
                    let msg = Message {
                        tid: s.tid.clone(),
                        version: None,
                        ip: None,
                        read_only: false,
                        body: Body::Response(r),
                    };
                    self.node.handle_datagram(now, s.to, &msg.encode());
                }
            }
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
            }
            self.collect();
        }
    }

    /// Stats, closest nodes and announce count of a finished lookup.
    fn done(&self, lid: LookupId) -> Option<(LookupStats, Vec<NodeInfo>, usize, Duration)> {
        self.events.iter().find_map(|e| match e {
            Event::LookupDone {
                lookup,
                stats,
                closest,
                announced,
                elapsed,
                ..
            } if *lookup == lid => Some((stats.clone(), closest.clone(), *announced, *elapsed)),
            _ => None,
        })
    }

    fn peers(&self, lid: LookupId) -> Vec<SocketAddrV4> {
        self.events
            .iter()
            .flat_map(|e| match e {
                Event::Peers { lookup, peers } if *lookup == lid => peers.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn queried(&self, a: &SocketAddrV4) -> bool {
        self.sent.iter().any(|s| s.to == *a)
    }
}

fn sa(a: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), port)
}

/// An id whose first byte is `b` and the rest `rest`.
fn id(b: u8, rest: u8) -> Id {
    let mut i = [rest; 20];
    i[0] = b;
    Id(i)
}

fn answer(id: Id, nodes: Vec<NodeInfo>) -> Response {
    Response {
        id,
        nodes: Some(nodes),
        ..Response::default()
    }
}

/// An id `d` away from zero: the bigger `d`, the farther.
fn at_distance(d: u64) -> Id {
    let mut i = [0u8; 20];
    i[12..].copy_from_slice(&d.to_be_bytes());
    Id(i)
}

#[test]
fn a_real_node_listed_under_a_fake_id_is_ranked_by_the_id_it_answers_with() {
    // A liar at the bootstrap address lists eight real nodes under ids right next to the
    // target; they answer with their true (far) ids. Honest nodes closer than those true ids
    // exist (the liar lists them too). The lookup must not end on the liars' word.
    let target = Id::ZERO;
    let liar = sa([10, 0, 0, 100], 6881);
    let real = |j: u8| sa([10, 0, 1, j], 6881);
    let real_id = |j: u8| id(0x80 + j, 0);
    let honest = |j: u8| sa([10, 0, 2, j], 6881);
    let honest_id = |j: u8| id(0x10 + j, 0);
    let mut b = Bench::new(id(0xee, 0xee), Config::default());
    b.node.add_bootstrap_addrs(&[liar]);
    let lid = b.node.find_node(Time(0), target);
    b.run(50, 100, |s| {
        if s.to == liar {
            let mut nodes: Vec<NodeInfo> = (1..=8)
                .map(|j| NodeInfo {
                    id: at_distance(u64::from(j)),
                    addr: real(j),
                })
                .collect();
            nodes.extend((1..=8).map(|j| NodeInfo {
                id: honest_id(j),
                addr: honest(j),
            }));
            return Some(answer(id(0x70, 0), nodes));
        }
        let j = s.to.ip().octets()[3];
        match s.to.ip().octets()[2] {
            1 => Some(answer(real_id(j), vec![])),
            2 => Some(answer(honest_id(j), vec![])),
            _ => None,
        }
    });
    let (_, closest, _, _) = b.done(lid).expect("lookup finished");
    let fake: Vec<Id> = (1..=8).map(at_distance).collect();
    assert!(
        closest.iter().all(|n| !fake.contains(&n.id)),
        "a fake id survived: {closest:?}"
    );
    for j in 1..=8 {
        assert!(b.queried(&honest(j)), "honest node {j} was never asked");
        assert!(closest
            .iter()
            .any(|n| n.addr == honest(j) && n.id == honest_id(j)));
    }
}

#[test]
fn our_own_id_is_never_queried() {
    let own = id(0x01, 0x01);
    let boot = sa([10, 0, 0, 1], 6881);
    let echo = sa([10, 0, 0, 2], 6881);
    let mut b = Bench::new(own, Config::default());
    b.node.add_bootstrap_addrs(&[boot]);
    let lid = b.node.find_node(Time(0), Id::ZERO);
    b.run(50, 50, |s| {
        (s.to == boot).then(|| {
            answer(
                id(0x40, 0),
                vec![NodeInfo {
                    id: own,
                    addr: echo,
                }],
            )
        })
    });
    assert!(b.done(lid).is_some());
    assert!(
        !b.queried(&echo),
        "a node listed under our own id was queried"
    );
}

#[test]
fn a_public_node_cannot_hand_out_unroutable_or_local_addresses() {
    let boot = sa([93, 184, 216, 34], 6881);
    let bad = [
        sa([0, 0, 0, 0], 6881),
        sa([8, 8, 8, 8], 0),
        sa([127, 0, 0, 1], 6881),
        sa([192, 168, 1, 1], 6881),
        sa([10, 1, 1, 1], 6881),
        sa([169, 254, 1, 1], 6881),
        sa([224, 0, 0, 1], 6881),
        sa([255, 255, 255, 255], 6881),
    ];
    let mut b = Bench::new(id(0xee, 0), Config::default());
    b.node.add_bootstrap_addrs(&[boot]);
    let ih = Id::ZERO;
    let lid = b.node.get_peers(Time(0), ih, None);
    b.run(50, 50, |s| {
        (s.to == boot).then(|| Response {
            id: id(0x40, 0),
            nodes: Some(
                bad.iter()
                    .enumerate()
                    .map(|(i, a)| NodeInfo {
                        id: at_distance(i as u64 + 1),
                        addr: *a,
                    })
                    .collect(),
            ),
            values: bad.to_vec(),
            token: Some(b"t".to_vec()),
            ..Response::default()
        })
    });
    assert!(b.done(lid).is_some());
    for a in bad {
        assert!(!b.queried(&a), "{a} was queried");
    }
    assert!(b.peers(lid).is_empty(), "martian peers: {:?}", b.peers(lid));
}

#[test]
fn local_responders_may_list_local_nodes() {
    // A test network on 127.x and a LAN on 10.x work with the default policy.
    for (boot, listed) in [
        (sa([127, 0, 0, 1], 7000), sa([127, 0, 0, 2], 7001)),
        (sa([10, 0, 0, 1], 6881), sa([10, 0, 0, 2], 6881)),
    ] {
        let mut b = Bench::new(id(0xee, 0), Config::default());
        b.node.add_bootstrap_addrs(&[boot]);
        let lid = b.node.get_peers(Time(0), Id::ZERO, None);
        b.run(50, 50, |s| {
            (s.to == boot).then(|| Response {
                id: id(0x40, 0),
                nodes: Some(vec![NodeInfo {
                    id: id(0x01, 0),
                    addr: listed,
                }]),
                values: vec![listed],
                token: None,
                ..Response::default()
            })
        });
        assert!(b.done(lid).is_some());
        assert!(b.queried(&listed), "{listed} from {boot}");
        assert_eq!(b.peers(lid), vec![listed]);
    }
}

#[test]
fn one_public_ip_gets_only_a_few_candidates() {
    let boot = sa([93, 184, 216, 34], 6881);
    let host = Ipv4Addr::new(5, 6, 7, 8);
    let cfg = Config::default();
    let cap = cfg.lookup_max_per_ip;
    let mut b = Bench::new(id(0xee, 0), cfg);
    b.node.add_bootstrap_addrs(&[boot]);
    let lid = b.node.find_node(Time(0), Id::ZERO);
    b.run(50, 100, |s| {
        (s.to == boot).then(|| {
            answer(
                id(0x40, 0),
                (0..20u16)
                    .map(|i| NodeInfo {
                        id: at_distance(u64::from(i) + 1),
                        addr: SocketAddrV4::new(host, 1000 + i),
                    })
                    .collect(),
            )
        })
    });
    assert!(b.done(lid).is_some());
    let to_host = b.sent.iter().filter(|s| *s.to.ip() == host).count();
    assert!(to_host <= cap, "{to_host} queries to one IP (cap {cap})");
}

/// An attacker answering every query with one node closer to the target than the last,
/// each at a new address (and a peer list of `values` fresh peers).
fn ever_closer(counter: &mut u64, values: usize) -> Response {
    *counter += 1;
    let c = *counter;
    let addr = |c: u64, net: u8| {
        SocketAddrV4::new(
            Ipv4Addr::new(net, (c >> 16) as u8, (c >> 8) as u8, c as u8),
            6881,
        )
    };
    Response {
        id: at_distance(u64::MAX - c),
        nodes: Some(vec![NodeInfo {
            id: at_distance(u64::MAX - c - 1),
            addr: addr(c + 0x1_0000, 10),
        }]),
        values: (0..values as u64).map(|v| addr(c * 1000 + v, 20)).collect(),
        token: None,
        ..Response::default()
    }
}

#[test]
fn ever_closer_fake_ids_cannot_keep_a_lookup_alive_past_its_query_budget() {
    let cfg = Config::default();
    let budget = cfg.lookup_max_queries;
    let mut b = Bench::new(id(0xee, 0), cfg);
    b.node.add_bootstrap_addrs(&[sa([10, 0, 0, 1], 6881)]);
    let lid = b.node.find_node(Time(0), Id::ZERO);
    let mut counter = 0;
    // Fast answers: only the query budget can end it (1000 rounds of 10 ms = 10 s).
    b.run(10, 1000, |_| Some(ever_closer(&mut counter, 0)));
    let (stats, _, _, _) = b.done(lid).expect("the lookup ended");
    assert!(stats.queried <= budget, "{} queries", stats.queried);
    assert!(b.sent.len() <= budget as usize);
}

#[test]
fn ever_closer_fake_ids_cannot_keep_a_lookup_alive_past_its_deadline() {
    let cfg = Config {
        lookup_max_queries: u32::MAX,
        ..Config::default()
    };
    let deadline = cfg.lookup_timeout;
    let widen = cfg.widen_after;
    let mut b = Bench::new(id(0xee, 0), cfg);
    b.node.add_bootstrap_addrs(&[sa([10, 0, 0, 1], 6881)]);
    let lid = b.node.find_node(Time(0), Id::ZERO);
    let mut counter = 0;
    // Slow answers (400 ms each) for four times the deadline.
    let rounds = (deadline.as_millis() * 4 / 400) as usize;
    b.run(400, rounds, |_| Some(ever_closer(&mut counter, 0)));
    let (_, _, _, elapsed) = b.done(lid).expect("the lookup ended");
    assert!(elapsed <= deadline + widen, "took {elapsed:?}");
}

#[test]
fn peers_a_lookup_reports_are_bounded() {
    let cfg = Config::default();
    let cap = cfg.lookup_max_peers;
    let mut b = Bench::new(id(0xee, 0), cfg);
    b.node.add_bootstrap_addrs(&[sa([10, 0, 0, 1], 6881)]);
    let lid = b.node.get_peers(Time(0), Id::ZERO, None);
    let mut counter = 0;
    b.run(10, 100, |_| Some(ever_closer(&mut counter, 100)));
    let peers = b.peers(lid);
    assert!(!peers.is_empty());
    assert!(
        peers.len() <= cap,
        "{} peers reported (cap {cap})",
        peers.len()
    );
}

#[test]
fn announces_go_to_the_k_closest_nodes_that_gave_a_token() {
    // Eight far nodes give tokens; they list eight closer nodes that give none (as a node
    // that does not store peers might). Announcing needs tokens: all eight far nodes.
    let cfg = Config {
        alpha: 8,
        ..Config::default()
    };
    let k = cfg.k;
    let far = |j: u8| sa([10, 0, 1, j], 6881);
    let near = |j: u8| sa([10, 0, 2, j], 6881);
    let mut b = Bench::new(id(0xee, 0), cfg);
    let boot: Vec<SocketAddrV4> = (1..=8).map(far).collect();
    b.node.add_bootstrap_addrs(&boot);
    let lid = b.node.get_peers(
        Time(0),
        Id::ZERO,
        Some(AnnounceSpec {
            port: 4000,
            implied_port: false,
        }),
    );
    b.run(50, 100, |s| {
        let j = s.to.ip().octets()[3];
        match (s.to.ip().octets()[2], &s.method) {
            (1, Method::GetPeers { .. }) => Some(Response {
                id: id(0x80 + j, 0),
                nodes: Some(
                    (1..=8)
                        .map(|i| NodeInfo {
                            id: id(0x01 + i, 0),
                            addr: near(i),
                        })
                        .collect(),
                ),
                values: vec![],
                token: Some(vec![j]),
                ..Response::default()
            }),
            (2, Method::GetPeers { .. }) => Some(answer(id(0x01 + j, 0), vec![])),
            (_, Method::AnnouncePeer { .. }) => Some(answer(id(0x80 + j, 0), vec![])),
            _ => None,
        }
    });
    let (_, _, announced, _) = b.done(lid).expect("lookup finished");
    assert_eq!(announced, k, "announced to {announced}");
    let to: Vec<SocketAddrV4> = b
        .sent
        .iter()
        .filter(|s| matches!(s.method, Method::AnnouncePeer { .. }))
        .map(|s| s.to)
        .collect();
    assert_eq!(to.len(), k);
    assert!(to.iter().all(|a| boot.contains(a)), "{to:?}");
}

#[test]
fn a_private_address_does_not_count_as_bep42_verified() {
    // BEP 42 cannot vouch for a private address: such a node claiming the id next to the
    // target must not rank before a verified public node.
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let ip = Ipv4Addr::new(84, 124, 73, 14);
    let verified = NodeInfo {
        id: bep42::id_for_ip(&ip, &mut rng),
        addr: SocketAddrV4::new(ip, 6881),
    };
    let private = NodeInfo {
        id: at_distance(1),
        addr: sa([192, 168, 1, 7], 6881),
    };
    let cfg = Config {
        alpha: 1,
        bep42: Bep42Mode::Prefer,
        ..Config::default()
    };
    let mut b = Bench::new(id(0xee, 0), cfg);
    b.node.insert_node(Time(0), private);
    b.node.insert_node(Time(0), verified);
    b.node.find_node(Time(0), Id::ZERO);
    b.collect();
    assert_eq!(b.sent.first().map(|s| s.to), Some(verified.addr));
}

#[test]
fn a_liar_listing_the_closest_ids_at_dead_addresses_cannot_hide_the_real_nodes() {
    // The liar crawled the target's neighbourhood: its first answer lists the eight true
    // closest ids at dead addresses, before anyone else lists them. The closest real node
    // (a bootstrap address, queried without an id) answers under one of those ids and lists
    // the seven others at their real addresses. The lookup must query and rank the real
    // nodes, and announce to them.
    let target = Id::ZERO;
    let liar = sa([10, 0, 0, 100], 6881);
    let dead = |j: u8| sa([10, 0, 9, j], 6881);
    let real = |j: u8| sa([10, 0, 4, j], 6881);
    let cfg = Config::default();
    let k = cfg.k;
    let mut b = Bench::new(id(0xee, 0), cfg);
    b.node.add_bootstrap_addrs(&[liar, real(1)]);
    let lid = b.node.get_peers(
        Time(0),
        target,
        Some(AnnounceSpec {
            port: 4000,
            implied_port: false,
        }),
    );
    let listing = |addr: &dyn Fn(u8) -> SocketAddrV4, from: u8| -> Vec<NodeInfo> {
        (from..=8)
            .map(|j| NodeInfo {
                id: at_distance(u64::from(j)),
                addr: addr(j),
            })
            .collect()
    };
    b.run(50, 200, |s| {
        if s.to == liar {
            return match s.method {
                Method::GetPeers { .. } => Some(Response {
                    id: id(0x70, 0),
                    nodes: Some(listing(&dead, 1)),
                    values: vec![],
                    token: Some(b"liar".to_vec()),
                    ..Response::default()
                }),
                _ => Some(answer(id(0x70, 0), vec![])),
            };
        }
        let [_, _, net, j] = s.to.ip().octets();
        if net != 4 {
            return None; // the dead addresses
        }
        Some(match s.method {
            Method::GetPeers { .. } => Response {
                id: at_distance(u64::from(j)),
                nodes: Some(if j == 1 { listing(&real, 2) } else { vec![] }),
                values: vec![],
                token: Some(vec![j]),
                ..Response::default()
            },
            _ => answer(at_distance(u64::from(j)), vec![]),
        })
    });
    let (_, closest, announced, _) = b.done(lid).expect("lookup finished");
    let announced_to: Vec<SocketAddrV4> = b
        .sent
        .iter()
        .filter(|s| matches!(s.method, Method::AnnouncePeer { .. }))
        .map(|s| s.to)
        .collect();
    for j in 1..=8 {
        assert!(b.queried(&real(j)), "real node {j} was never asked");
        assert!(
            closest
                .iter()
                .any(|n| n.addr == real(j) && n.id == at_distance(u64::from(j))),
            "real node {j} is not among the closest: {closest:?}"
        );
        assert!(
            announced_to.contains(&real(j)),
            "no announce to real node {j}: {announced_to:?}"
        );
    }
    assert_eq!(announced, k);
    assert!(closest
        .iter()
        .all(|n| n.addr != liar && n.addr.ip().octets()[2] != 9));
}
