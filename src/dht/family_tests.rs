//! Tests of the node's address-family behaviour (BEP 32 IPv6, and the node lists BEP 5
//! replies must carry), driven with fake time and hand-made datagrams: no sockets.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};

use super::*;
use crate::id::Id;
use crate::krpc::{Body, DhtAddr, Message, Method, NodeInfo, Query, Want};

/// A query from node id `[9; 20]` as a datagram.
fn query(tid: &[u8], method: Method, want: Want) -> Vec<u8> {
    Message {
        tid: tid.to_vec(),
        version: None,
        ip: None,
        read_only: false,
        body: Body::Query(Query {
            id: Id([9; 20]),
            method,
            want,
        }),
    }
    .encode()
}

fn v4(last: u8) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, last), 6881)
}

#[test]
fn empty_table_still_names_nodes_in_find_node_and_get_peers_answers() {
    // Hole 11: `nodes` is part of every find_node / get_peers answer, even an empty one.
    let mut node = Dht::new(Id([1; 20]), Config::default(), 1, Time(0));
    let from = v4(7);
    for (tid, method) in [
        (
            &b"f"[..],
            Method::FindNode {
                target: Id([2; 20]),
            },
        ),
        (
            &b"g"[..],
            Method::GetPeers {
                info_hash: Id([2; 20]),
            },
        ),
    ] {
        node.handle_datagram(Time(0), from, &query(tid, method, Want::NONE));
        let t = node.poll_transmit().expect("an answer");
        assert!(
            t.data.windows(9).any(|w| w == b"5:nodes0:"),
            "empty `nodes` key in {:?}",
            String::from_utf8_lossy(&t.data)
        );
        let Body::Response(r) = Message::decode(&t.data).unwrap().body else {
            panic!("expected a response")
        };
        assert_eq!(r.nodes, Some(Vec::new()));
        while node.poll_transmit().is_some() {}
    }
    node.handle_datagram(Time(0), from, &query(b"p", Method::Ping, Want::NONE));
    let t = node.poll_transmit().expect("an answer");
    let Body::Response(r) = Message::decode(&t.data).unwrap().body else {
        panic!("expected a response")
    };
    assert_eq!(r.nodes, None, "a ping answer has no node list");
}

fn v6(i: u16) -> SocketAddrV6 {
    // Unique-local addresses: exempt from BEP 42, one per node.
    SocketAddrV6::new(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i + 1), 6881, 0, 0)
}

/// Delivers every queued datagram at once and fires timers in time order, until `until`.
fn run<A: DhtAddr>(nodes: &mut [Dht<A>], addrs: &[A], now: &mut Time, until: Time) {
    loop {
        let mut moved = false;
        for i in 0..nodes.len() {
            while let Some(t) = nodes[i].poll_transmit() {
                moved = true;
                if let Some(j) = addrs.iter().position(|a| *a == t.to) {
                    nodes[j].handle_datagram(*now, addrs[i], &t.data);
                }
            }
        }
        if moved {
            continue;
        }
        let next = nodes.iter_mut().filter_map(|n| n.poll_timeout()).min();
        match next {
            Some(t) if t <= until => {
                *now = t.max(*now);
                for n in nodes.iter_mut() {
                    if n.poll_timeout().is_some_and(|d| d <= *now) {
                        n.handle_timeout(*now);
                    }
                }
            }
            _ => return,
        }
    }
}

#[test]
fn ipv6_network_forms_and_announced_peer_is_found() {
    // BEP 32: the same core over IPv6 — 38-byte nodes6, 18-byte values and ip.
    let n = 24u16;
    let addrs: Vec<SocketAddrV6> = (0..n).map(v6).collect();
    let mut nodes: Vec<Dht<SocketAddrV6>> = (0..n)
        .map(|i| {
            let mut id = [0u8; 20];
            id[..2].copy_from_slice(&(i.wrapping_mul(40503)).to_be_bytes());
            id[19] = i as u8;
            Dht::new(Id(id), Config::default(), u64::from(i), Time(0))
        })
        .collect();
    let mut now = Time(0);
    for i in 1..nodes.len() {
        nodes[i].bootstrap(now, &[addrs[0]]);
        let until = Time(now.0 + 5_000);
        run(&mut nodes, &addrs, &mut now, until);
    }
    assert!(
        nodes.iter().all(|d| d.routing_table().len() >= 8),
        "every IPv6 node knows at least k others: {:?}",
        nodes
            .iter()
            .map(|d| d.routing_table().len())
            .collect::<Vec<_>>()
    );
    let ih = Id([0x5a; 20]);
    nodes[5].get_peers(
        now,
        ih,
        Some(AnnounceSpec {
            port: 7000,
            implied_port: false,
        }),
    );
    let until = Time(now.0 + 10_000);
    run(&mut nodes, &addrs, &mut now, until);
    while nodes[5].poll_event().is_some() {}
    let l = nodes[17].get_peers(now, ih, None);
    let until = Time(now.0 + 10_000);
    run(&mut nodes, &addrs, &mut now, until);
    let mut found = Vec::new();
    while let Some(e) = nodes[17].poll_event() {
        if let Event::Peers { lookup, peers } = e {
            if lookup == l {
                found.extend(peers);
            }
        }
    }
    let want = SocketAddrV6::new(*addrs[5].ip(), 7000, 0, 0);
    assert_eq!(
        found,
        vec![want],
        "the announced IPv6 peer, with its TCP port"
    );
    assert_eq!(
        nodes[17].external_addr().map(|a| *a.ip()),
        Some(*addrs[17].ip()),
        "the 18-byte `ip` key of answers tells us our IPv6 address"
    );
}

#[test]
fn want_asks_for_the_other_familys_nodes() {
    // BEP 32: a dual-stack node answers `want n4` over IPv6 from its IPv4 table.
    let mut d4: Dht<SocketAddrV4> = Dht::new(Id([1; 20]), Config::default(), 1, Time(0));
    let mut d6: Dht<SocketAddrV6> = Dht::new(Id([1; 20]), Config::default(), 2, Time(0));
    for i in 0..3u8 {
        let mut id = [0x80u8; 20];
        id[19] = i;
        d4.insert_node(
            Time(0),
            NodeInfo {
                id: Id(id),
                addr: v4(i + 1),
            },
        );
        d6.insert_node(
            Time(0),
            NodeInfo {
                id: Id([0x40 + i; 20]),
                addr: v6(u16::from(i) + 1),
            },
        );
    }
    let from = v6(99);
    let ask = |d6: &mut Dht<SocketAddrV6>, d4: &Dht<SocketAddrV4>, want: Want| {
        let q = query(
            b"w",
            Method::FindNode {
                target: Id([0x80; 20]),
            },
            want,
        );
        d6.handle_datagram_with(Time(0), from, &q, Some(d4));
        let mut reply = None;
        while let Some(t) = d6.poll_transmit() {
            if t.to == from && reply.is_none() {
                reply = Some(t.data);
            }
        }
        match Message::decode(&reply.expect("an answer")).unwrap().body {
            Body::Response(r) => r,
            other => panic!("expected a response, got {other:?}"),
        }
    };
    let both = ask(&mut d6, &d4, Want::BOTH);
    assert_eq!(
        both.nodes.as_ref().map(Vec::len),
        Some(3),
        "IPv4 nodes from the IPv4 table"
    );
    assert_eq!(
        both.nodes6.as_ref().map(Vec::len),
        Some(3),
        "own IPv6 nodes"
    );
    let n4 = ask(&mut d6, &d4, Want::N4);
    assert_eq!(n4.nodes.as_ref().map(Vec::len), Some(3));
    assert_eq!(n4.nodes6, None, "only what was asked for");
    let plain = ask(&mut d6, &d4, Want::NONE);
    assert_eq!(plain.nodes, None, "no want: the socket's own family only");
    assert_eq!(plain.nodes6.as_ref().map(Vec::len), Some(3));
    // A node without the other family simply has nothing to add.
    let q = query(
        b"x",
        Method::FindNode {
            target: Id([0x80; 20]),
        },
        Want::N6,
    );
    d4.handle_datagram(Time(0), v4(50), &q);
    let t = d4.poll_transmit().expect("an answer");
    let Body::Response(r) = Message::decode(&t.data).unwrap().body else {
        panic!("expected a response")
    };
    assert_eq!((r.nodes, r.nodes6), (None, None));
}
