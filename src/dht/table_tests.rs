//! Node-level tests of the routing-table side of the core (issue 9, round 2): timeouts charged
//! by id *and* address, error replies and failed sends settle liveness pings, our own send
//! failures are not the remote's, saved state, routers, refresh scheduling and BEP 42 joins.
//! Each drives one [`Dht`] with fake time and hand-made datagrams: no sockets, no sleeps.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::*;
use crate::id::Id;
use crate::krpc::{Body, ErrorCode, KrpcError, Message, Method, NodeInfo, Query, Response};

const LATER: Duration = Duration::from_secs(16 * 60);

fn priv_addr(i: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 7, 0, i), 6881)
}

fn far(i: u8) -> NodeInfo {
    let mut id = [0x80u8; 20];
    id[19] = i;
    NodeInfo {
        id: Id(id),
        addr: priv_addr(i + 1),
    }
}

/// A node with id 0 whose far bucket holds 8 nodes and whose near bucket holds one, all
/// having answered at `Time(0)`.
fn node_with_table() -> Dht {
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    for i in 0..8 {
        assert_eq!(d.insert_node(Time(0), far(i)), Insert::Added);
    }
    let near = NodeInfo {
        id: Id([0x40; 20]),
        addr: priv_addr(100),
    };
    assert_eq!(d.insert_node(Time(0), near), Insert::Added);
    assert_eq!(d.routing_table().buckets().len(), 2);
    d
}

fn sent(d: &mut Dht) -> Vec<(SocketAddrV4, Message)> {
    let mut out = Vec::new();
    while let Some(t) = d.poll_transmit() {
        if let Ok(m) = Message::decode(&t.data) {
            out.push((t.to, m));
        }
    }
    out
}

/// The pings `d` sent since the last look.
fn sent_pings(d: &mut Dht) -> Vec<(SocketAddrV4, Message)> {
    sent(d)
        .into_iter()
        .filter(|(_, m)| {
            matches!(
                &m.body,
                Body::Query(Query {
                    method: Method::Ping,
                    ..
                })
            )
        })
        .collect()
}

fn is_query(m: &Message) -> bool {
    matches!(m.body, Body::Query(_))
}

fn reply(
    d: &mut Dht,
    now: Time,
    from: SocketAddrV4,
    q: &Message,
    id: Id,
    ip: Option<SocketAddrV4>,
) {
    reply_listing(d, now, from, q, id, ip, None);
}

/// An answer to `q` from `from` under `id`, listing `nodes`.
fn reply_listing(
    d: &mut Dht,
    now: Time,
    from: SocketAddrV4,
    q: &Message,
    id: Id,
    ip: Option<SocketAddrV4>,
    nodes: Option<Vec<NodeInfo>>,
) {
    let r = Message {
        tid: q.tid.clone(),
        version: None,
        ip: ip.map(std::net::SocketAddr::V4),
        read_only: false,
        body: Body::Response(Response {
            id,
            nodes,
            ..Response::default()
        }),
    };
    d.handle_datagram(now, from, &r.encode());
}

fn reply_error(d: &mut Dht, now: Time, from: SocketAddrV4, q: &Message) {
    let r = Message {
        tid: q.tid.clone(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Error(KrpcError {
            code: ErrorCode::Server,
            message: b"busy".to_vec(),
        }),
    };
    d.handle_datagram(now, from, &r.encode());
}

#[test]
fn spoofed_queries_under_a_known_id_do_not_make_the_real_node_bad() {
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    let x = far(1);
    d.insert_node(Time(0), x);
    // An attacker keeps querying us under X's id from an address that never answers: each
    // query earns a verification ping to (X.id, dead address), which times out.
    let dead = priv_addr(66);
    let mut now = Time(1_000);
    for round in 0..4u8 {
        let q = Message {
            tid: vec![b'q', round],
            version: None,
            ip: None,
            read_only: false,
            body: Body::Query(Query {
                id: x.id,
                method: Method::Ping,
                want: crate::krpc::Want::NONE,
            }),
        };
        d.handle_datagram(now, dead, &q.encode());
        let out = sent(&mut d);
        assert!(
            out.iter().any(|(to, m)| *to == dead && is_query(m)),
            "round {round}: a verification ping went to the dead address"
        );
        now = now + Duration::from_secs(3);
        d.handle_timeout(now);
    }
    assert!(d.stats().timeouts >= 4);
    let e = d.routing_table().get(&x.id).expect("X still listed");
    assert_eq!(e.fails, 0, "X was charged for another address's silence");
    assert_eq!(e.state(now), NodeState::Good);
}

#[test]
fn an_error_reply_to_a_ping_first_clears_the_flag() {
    let mut d = node_with_table();
    let later = Time(0) + LATER;
    // A newcomer answers while the far bucket is full of questionable nodes: the stalest
    // one gets a liveness ping...
    let newcomer = priv_addr(50);
    d.add_node(later, newcomer);
    let out = sent(&mut d);
    let (_, ping) = out.iter().find(|(to, _)| *to == newcomer).expect("ping");
    reply(&mut d, later, newcomer, ping, Id([0x90; 20]), None);
    let out = sent(&mut d);
    let (to, ping) = out
        .iter()
        .find(|(_, m)| is_query(m))
        .expect("a ping-first went out");
    let stale = d
        .routing_table()
        .iter()
        .find(|e| e.node.addr == *to)
        .map(|e| e.node)
        .expect("the pinged node is in the table");
    assert!(d.routing_table().get(&stale.id).is_some_and(|e| e.pinging));
    // ...which it answers with a KRPC error: alive, and the flag is settled.
    reply_error(&mut d, later, *to, ping);
    let e = d.routing_table().get(&stale.id).expect("still listed");
    assert!(!e.pinging, "ping-before-replace flag stuck");
    assert_eq!(e.state(later), NodeState::Good);
}

/// Drives `d` through `span` of fake time, handing every datagram to `fate`.
fn run(
    d: &mut Dht,
    from: Time,
    span: Duration,
    mut fate: impl FnMut(&mut Dht, Time, Transmit),
) -> Time {
    let end = from + span;
    let mut now = from;
    while now < end {
        d.handle_timeout(now);
        while let Some(t) = d.poll_transmit() {
            fate(d, now, t);
        }
        let next = d.poll_timeout().unwrap_or(end);
        now = next.max(now + Duration::from_millis(1)).min(end);
    }
    now
}

#[test]
fn a_network_blip_does_not_empty_the_table() {
    let mut d = node_with_table();
    let later = Time(0) + LATER;
    // Every send fails locally (ENETUNREACH) for 20 minutes of refreshes.
    let now = run(&mut d, later, Duration::from_secs(20 * 60), |d, now, t| {
        d.on_send_error(now, t.to, &t.data)
    });
    assert!(d.stats().queries_out > 0, "refreshes were attempted");
    assert_eq!(
        d.stats().timeouts,
        0,
        "a query that never left cannot time out"
    );
    let t = d.routing_table();
    assert_eq!(t.len(), 9);
    assert!(
        t.iter().all(|e| e.fails == 0 && !e.pinging),
        "our own failures were charged to the nodes"
    );
    assert_eq!(d.saved_nodes(now).len(), 9);
}

#[test]
fn saved_state_keeps_the_last_good_table_through_an_outage() {
    let mut d = node_with_table();
    let later = Time(0) + LATER;
    // Sends "succeed" but nothing comes back for 40 minutes (a dead uplink).
    let now = run(&mut d, later, Duration::from_secs(40 * 60), |_, _, _| {});
    let bad = d
        .routing_table()
        .iter()
        .filter(|e| e.state(now) == NodeState::Bad)
        .count();
    assert!(bad > 0, "the outage made nodes fail");
    let saved = d.saved_nodes(now);
    for e in d.routing_table().iter() {
        assert!(
            saved.contains(&e.node),
            "{:?} dropped from the saved state",
            e.node
        );
    }
}

#[test]
fn routers_never_enter_the_table_and_saved_contacts_keep_their_ids() {
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    let router = priv_addr(200);
    let saved = NodeInfo {
        id: Id([0x55; 20]),
        addr: priv_addr(201),
    };
    d.add_saved_nodes(&[saved]);
    d.add_routers(&[router]);
    d.bootstrap(Time(0), &[router]);
    // Offline start: nothing answered, yet the saved state still holds the contact.
    assert_eq!(d.saved_nodes(Time(0)), vec![saved]);
    let out = sent(&mut d);
    let (_, to_router) = out
        .iter()
        .find(|(to, _)| *to == router)
        .expect("router queried");
    let (_, to_saved) = out
        .iter()
        .find(|(to, _)| *to == saved.addr)
        .expect("saved contact queried");
    let router_id = Id([0x66; 20]);
    reply(&mut d, Time(10), router, to_router, router_id, None);
    reply(&mut d, Time(10), saved.addr, to_saved, saved.id, None);
    assert!(
        d.routing_table().get(&router_id).is_none(),
        "a bootstrap router entered the routing table"
    );
    assert!(d.routing_table().get(&saved.id).is_some());
    // A router that queries us is not pulled in through a verification ping either.
    let q = Message {
        tid: b"rq".to_vec(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Query(Query {
            id: router_id,
            method: Method::Ping,
            want: crate::krpc::Want::NONE,
        }),
    };
    d.handle_datagram(Time(20), router, &q.encode());
    for (to, m) in sent(&mut d) {
        if to == router && is_query(&m) {
            reply(&mut d, Time(30), router, &m, router_id, None);
        }
    }
    assert!(d.routing_table().get(&router_id).is_none());
}

#[test]
fn refresh_is_not_starved_by_running_lookups() {
    let mut d = node_with_table();
    let later = Time(0) + LATER;
    // Four user lookups near our own id are running (their queries are unanswered).
    for i in 0..4u8 {
        d.get_peers(later, Id([i; 20]), None);
    }
    let _ = sent(&mut d);
    assert_eq!(d.active_lookups(), 4);
    let age = d.config().refresh_after;
    assert!(d.routing_table().stalest_bucket(later, age).is_some());
    d.handle_timeout(later);
    let refreshes = sent(&mut d)
        .into_iter()
        .filter(|(_, m)| {
            matches!(
                &m.body,
                Body::Query(Query {
                    method: Method::FindNode { .. },
                    ..
                })
            )
        })
        .count();
    assert_eq!(refreshes, 1, "the stale bucket was not refreshed");
    assert_eq!(d.stats().refresh_queries, 1);
}

/// The find_node queries in `out`, with their targets.
fn find_nodes(out: &[(SocketAddrV4, Message)]) -> Vec<(SocketAddrV4, Id, Message)> {
    out.iter()
        .filter_map(|(to, m)| match &m.body {
            Body::Query(Query {
                method: Method::FindNode { target },
                ..
            }) => Some((*to, *target, m.clone())),
            _ => None,
        })
        .collect()
}

/// Runs the maintenance due at `now` and returns the one query it sent: a find_node, and no
/// lookup (a lookup sends alpha queries at once and keeps going).
fn one_refresh_query(d: &mut Dht, now: Time) -> (SocketAddrV4, Id, Message) {
    d.handle_timeout(now);
    let out = sent(d);
    let mut fq = find_nodes(&out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(fq.len(), 1);
    assert_eq!(d.active_lookups(), 0);
    fq.remove(0)
}

#[test]
fn a_stale_full_bucket_is_refreshed_by_one_query_to_the_entry_heard_from_longest_ago() {
    // Far bucket: eight entries; seven answered again at minute 1, far(3) did not.
    let mut d = node_with_table();
    for i in (0..8).filter(|&i| i != 3) {
        d.insert_node(Time(60_000), far(i));
    }
    let near = NodeInfo {
        id: Id([0x40; 20]),
        addr: priv_addr(100),
    };
    d.insert_node(Time(120_000), near);
    let now = Time(60_000) + LATER;
    let (to, target, q) = &one_refresh_query(&mut d, now);
    assert_eq!(*to, far(3).addr, "asks the entry heard from longest ago");
    assert!(target.bit(0), "the target is in the far bucket's range");
    // Its answer keeps the bucket fresh: the next tick refreshes another bucket, if any.
    reply(&mut d, now, *to, q, far(3).id, None);
    let age = d.config().refresh_after;
    assert_ne!(d.routing_table().stalest_bucket(now, age), Some(0));
    assert_eq!(d.stats().refresh_queries, 1);
}

#[test]
fn nodes_a_refresh_lists_are_pinged_only_where_the_bucket_has_room() {
    // One entry: one bucket with room for seven more.
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    let only = far(0);
    d.insert_node(Time(0), only);
    let now = Time(0) + LATER;
    d.handle_timeout(now);
    let out = sent(&mut d);
    let fq = find_nodes(&out);
    assert_eq!(fq.len(), 1);
    let (to, _, q) = &fq[0];
    assert_eq!(*to, only.addr);
    // It lists three new nodes, ourselves, a node it already is, and an unroutable one.
    let mut listed: Vec<NodeInfo> = (1..4).map(far).collect();
    listed.push(NodeInfo {
        id: Id::ZERO,
        addr: priv_addr(200),
    });
    listed.push(only);
    listed.push(NodeInfo {
        id: far(9).id,
        addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    });
    reply_listing(&mut d, now, *to, q, only.id, None, Some(listed));
    let mut pinged: Vec<SocketAddrV4> = sent_pings(&mut d).into_iter().map(|(to, _)| to).collect();
    pinged.sort();
    let mut want: Vec<SocketAddrV4> = (1..4).map(|i| far(i).addr).collect();
    want.sort();
    assert_eq!(pinged, want);

    // A full bucket pings nobody a refresh lists.
    let mut d = node_with_table();
    let now = Time(0) + LATER;
    d.handle_timeout(now);
    let out = sent(&mut d);
    let fq = find_nodes(&out);
    let (to, _, q) = fq.first().expect("a refresh");
    let id = d
        .routing_table()
        .iter()
        .find(|e| e.node.addr == *to)
        .map(|e| e.node.id)
        .unwrap_or(Id::ZERO);
    let listed = (20..28).map(far).collect();
    reply_listing(&mut d, now, *to, q, id, None, Some(listed));
    assert!(sent(&mut d).is_empty(), "no ping for a full bucket");
}

#[test]
fn one_stale_bucket_is_refreshed_per_tick() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    for i in 0..400u32 {
        let b = i.to_be_bytes();
        let n = NodeInfo {
            id: Id::random(&mut rng),
            addr: SocketAddrV4::new(Ipv4Addr::new(10, b[1], b[2], b[3]), 1),
        };
        d.insert_node(Time(0), n);
    }
    // A few deep buckets, to have several stale at once.
    for depth in 1..6 {
        let mut id = Id::ZERO.random_in_bucket(depth, &mut rng);
        id.0[19] = depth as u8;
        let n = NodeInfo {
            id,
            addr: SocketAddrV4::new(Ipv4Addr::new(10, 200, depth as u8, 1), 1),
        };
        d.insert_node(Time(0), n);
    }
    let age = d.config().refresh_after;
    let stale = |d: &Dht, now| d.routing_table().stale_buckets(now, age).len();
    let mut now = Time(0) + LATER;
    let mut left = stale(&d, now);
    assert!(left >= 3, "only {left} stale buckets");
    let mut ticks = 0;
    while left > 0 {
        d.handle_timeout(now);
        // Every refresh is answered by the entry it went to (dead entries are probed again
        // and again: another test).
        for (to, q) in sent(&mut d) {
            let id = d
                .routing_table()
                .iter()
                .find(|e| e.node.addr == to)
                .map(|e| e.node.id);
            if let Some(id) = id {
                reply(&mut d, now, to, &q, id, None);
            }
        }
        let after = stale(&d, now);
        assert!(
            after + 1 >= left,
            "{} buckets refreshed in one tick",
            left - after
        );
        left = after;
        ticks += 1;
        assert!(ticks < 200, "refresh never got through the stale buckets");
        now = d
            .poll_timeout()
            .unwrap_or(now)
            .max(now + Duration::from_millis(1));
    }
}

#[test]
fn a_new_bep42_id_is_followed_by_a_join_lookup_for_it() {
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    let ours = SocketAddrV4::new(Ipv4Addr::new(84, 124, 73, 14), 6881);
    let mut now = Time(100);
    let mut changed = false;
    for i in 1..=5u8 {
        let voter = SocketAddrV4::new(Ipv4Addr::new(20, 0, i, 1), 6881);
        d.add_node(now, voter);
        let out = sent(&mut d);
        let (_, ping) = out.iter().find(|(to, _)| *to == voter).expect("ping");
        let mut id = [i; 20];
        id[0] = 0x10 * i;
        reply(&mut d, now, voter, ping, Id(id), Some(ours));
        while let Some(e) = d.poll_event() {
            changed |= matches!(e, Event::IdChanged { .. });
        }
        now = now + Duration::from_millis(10);
    }
    assert!(changed, "the quorum gave us a BEP 42 id");
    let new_id = d.id();
    assert!(bep42::is_valid(&new_id, ours.ip()));
    let joins = sent(&mut d)
        .into_iter()
        .filter(|(_, m)| {
            matches!(&m.body, Body::Query(Query { method: Method::FindNode { target }, .. }) if *target == new_id)
        })
        .count();
    assert!(joins > 0, "nobody was told about the new id");
}

#[test]
fn an_unanswered_refresh_probes_the_bucket_again_until_an_entry_answers() {
    let mut d = node_with_table();
    let mut now = Time(0) + LATER;
    let mut asked = Vec::new();
    // The far bucket's entries are all dead: each probe times out. Within a few minutes the
    // probes walk the bucket (each entry twice, then it is bad and the next is asked), where
    // a refresh once per interval would have asked one entry.
    let until = now + Duration::from_secs(5 * 60);
    while now < until {
        d.handle_timeout(now);
        for (to, m) in sent(&mut d) {
            if matches!(&m.body, Body::Query(Query { method: Method::FindNode { target }, .. }) if target.bit(0))
            {
                asked.push(to);
            }
        }
        now = d
            .poll_timeout()
            .unwrap_or(now)
            .max(now + Duration::from_millis(1));
    }
    let distinct: std::collections::BTreeSet<_> = asked.iter().collect();
    assert!(distinct.len() >= 4, "asked {asked:?}");
    let bad = d
        .routing_table()
        .iter()
        .filter(|e| e.node.id.bit(0) && e.state(now) == NodeState::Bad)
        .count();
    assert!(bad >= 3, "{bad} entries found dead");
}

#[test]
fn a_refresh_answered_under_another_id_counts_against_the_entry_asked() {
    // far(3) went away and a stranger now answers at its address: the refresh must not
    // count as far(3) answering, or far(3) would be asked again and again, never found dead.
    let mut d = node_with_table();
    for i in (0..8).filter(|&i| i != 3) {
        d.insert_node(Time(60_000), far(i));
    }
    let near = NodeInfo {
        id: Id([0x40; 20]),
        addr: priv_addr(100),
    };
    d.insert_node(Time(120_000), near);
    let mut now = Time(60_000) + LATER;
    let stranger = Id([0x99; 20]);
    for round in 1..=2u8 {
        d.handle_timeout(now);
        let out = sent(&mut d);
        let (to, _, q) = find_nodes(&out)
            .into_iter()
            .find(|(to, _, _)| *to == far(3).addr)
            .unwrap_or_else(|| panic!("round {round}: far(3) not asked: {out:?}"));
        reply(&mut d, now, to, &q, stranger, None);
        let e = d.routing_table().get(&far(3).id).expect("still listed");
        assert_eq!(e.fails, round, "round {round}");
        now = d
            .poll_timeout()
            .unwrap_or(now)
            .max(now + Duration::from_millis(1));
        let _ = sent(&mut d);
    }
    let e = d.routing_table().get(&far(3).id).expect("still listed");
    assert_eq!(e.state(now), NodeState::Bad);
}

#[test]
fn a_refresh_answer_listing_one_address_many_times_costs_one_ping() {
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    let only = far(0);
    d.insert_node(Time(0), only);
    let now = Time(0) + LATER;
    d.handle_timeout(now);
    let out = sent(&mut d);
    let (to, _, q) = find_nodes(&out).into_iter().next().expect("a refresh");
    // Eight made-up ids, all at one victim's address.
    let victim = priv_addr(77);
    let listed: Vec<NodeInfo> = (1..9)
        .map(|i| NodeInfo {
            id: far(i).id,
            addr: victim,
        })
        .collect();
    reply_listing(&mut d, now, to, &q, only.id, None, Some(listed));
    let pings = sent(&mut d)
        .into_iter()
        .filter(|(to, m)| {
            *to == victim
                && matches!(
                    &m.body,
                    Body::Query(Query {
                        method: Method::Ping,
                        ..
                    })
                )
        })
        .count();
    assert_eq!(pings, 1);
}

/// Our id 0 with nine entries whose first bit is 0 (so the table split and the far half,
/// bucket 0, is empty), all answered at `Time(0)`.
fn node_with_an_empty_far_bucket() -> Dht {
    let mut d = Dht::new(Id::ZERO, Config::default(), 1, Time(0));
    for i in 0..9u8 {
        let mut id = [0x40u8; 20];
        id[0] = 0x40 | (i << 2);
        id[19] = i;
        let n = NodeInfo {
            id: Id(id),
            addr: priv_addr(10 + i),
        };
        d.insert_node(Time(0), n);
    }
    let t = d.routing_table();
    assert!(t.buckets().len() >= 2);
    assert!(t.buckets()[0].entries.is_empty());
    d
}

#[test]
fn an_empty_bucket_is_refreshed_by_one_query_to_the_closest_known_node() {
    let mut d = node_with_an_empty_far_bucket();
    let now = Time(0) + LATER;
    let age = d.config().refresh_after;
    assert_eq!(d.routing_table().stalest_bucket(now, age), Some(0));
    // One query, not a lookup: any node outside bucket 0 keeps its own bucket for that
    // half of the id space, so its answer lists nodes there.
    let (to, target, q) = &one_refresh_query(&mut d, now);
    assert!(target.bit(0), "the target is in the empty bucket's range");
    let asked = d
        .routing_table()
        .iter()
        .find(|e| e.node.addr == *to)
        .map(|e| e.node.id)
        .expect("asks a table entry");
    let closest = d.routing_table().closest(target, 1, now);
    assert_eq!(closest.first().map(|n| n.id), Some(asked));
    // The nodes it lists in bucket 0 are pinged, and those that answer fill the bucket.
    let listed: Vec<NodeInfo> = (0..8).map(far).collect();
    reply_listing(&mut d, now, *to, q, asked, None, Some(listed));
    let pings = sent_pings(&mut d);
    assert_eq!(pings.len(), 8);
    for (to, m) in &pings {
        let id = (0..8)
            .map(far)
            .find(|n| n.addr == *to)
            .map(|n| n.id)
            .expect("pinged a listed node");
        reply(&mut d, now, *to, m, id, None);
    }
    assert_eq!(d.routing_table().buckets()[0].entries.len(), 8);
    assert_eq!(d.stats().refresh_queries, 1);
}

#[test]
fn an_unanswered_refresh_of_an_empty_bucket_makes_that_bucket_due_again() {
    // The entry asked sits in another bucket: its silence must make the *empty* bucket due
    // again (not the asked node's), or the empty bucket would wait a whole refresh interval.
    let mut d = node_with_an_empty_far_bucket();
    let mut now = Time(0) + LATER;
    let age = d.config().refresh_after;
    d.handle_timeout(now);
    assert_eq!(find_nodes(&sent(&mut d)).len(), 1);
    assert_ne!(d.routing_table().stalest_bucket(now, age), Some(0));
    // No answer: once the query times out, bucket 0 is due and asked again at the next tick.
    let until = now + Duration::from_secs(60);
    let mut again = 0;
    while now < until && again == 0 {
        now = d
            .poll_timeout()
            .unwrap_or(now)
            .max(now + Duration::from_millis(1));
        d.handle_timeout(now);
        again = find_nodes(&sent(&mut d))
            .iter()
            .filter(|(_, target, _)| target.bit(0))
            .count();
    }
    assert_eq!(again, 1, "bucket 0 was not asked again within a minute");
}
