//! Tests of the node's address-family behaviour (BEP 32 IPv6, and the node lists BEP 5
//! replies must carry), driven with fake time and hand-made datagrams: no sockets.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::id::Id;
use crate::krpc::{Body, Message, Method, Query, Want};

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
