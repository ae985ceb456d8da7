//! End to end through the binary: a network of `dhtnode bootstrap` processes on 127.0.x.y
//! forms, a peer announced through one node is found by `dhtnode lookup` through another,
//! state survives `kill -9`, and exit codes follow the contract.

mod common;

use std::time::Duration;

use common::{args, json, run_dhtnode, start_dht_network, Proc};

const IH: &str = "5a5f0e6e0d6a2c8e9b1d3f7a9c0b2d4e6f8a1c3e";

#[test]
fn thirty_two_nodes_form_a_network_and_lookup_finds_announced_peer() {
    let dir = tempfile::tempdir().unwrap();
    let net = 41;
    let procs = start_dht_network(net, 32, dir.path(), &[]);
    // Every node reaches a routing table of at least k = 8 nodes.
    for p in &procs {
        p.wait_line(Duration::from_secs(30), "nodes >= 8", |l| {
            json(l)["nodes"].as_u64().unwrap_or(0) >= 8
        });
    }
    let (code, out, err) = run_dhtnode(
        &args(&[
            "lookup",
            IH,
            "--bind",
            &format!("127.{net}.1.1:0"),
            "--bootstrap",
            &format!("127.{net}.0.4:6881"),
            "--announce",
            "5555",
            "--json",
            "--timeout",
            "20",
        ]),
        Duration::from_secs(30),
    );
    // Nobody announced yet: exit 1, but the announce went out and was acknowledged.
    assert_eq!(code, 1, "stdout {out} stderr {err}");
    let r = json(out.trim());
    assert!(r["announce_acks"].as_u64().unwrap() >= 4, "{r}");
    assert!(err.contains("no peers found"), "{err}");

    let (code, out, err) = run_dhtnode(
        &args(&[
            "lookup",
            IH,
            "--bind",
            &format!("127.{net}.1.2:0"),
            "--bootstrap",
            &format!("127.{net}.0.29:6881"),
            "--json",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "stdout {out} stderr {err}");
    let r = json(out.trim());
    let peers: Vec<&str> = r["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert_eq!(peers, vec![format!("127.{net}.1.1:5555")]);
    assert!(r["first_peer_ms"].as_u64().is_some());
    assert!(r["nodes_queried"].as_u64().unwrap() >= 1);
    for key in ["infohash", "responses", "elapsed_ms"] {
        assert!(r.get(key).is_some(), "missing {key} in {r}");
    }
    drop(procs);
}

#[test]
fn state_survives_kill_9_and_restart_keeps_the_id() {
    let dir = tempfile::tempdir().unwrap();
    let net = 42;
    let mut procs = start_dht_network(net, 10, dir.path(), &[]);
    let status = procs[5].wait_line(Duration::from_secs(20), "nodes >= 5", |l| {
        json(l)["nodes"].as_u64().unwrap_or(0) >= 5
    });
    let id = json(&status)["node_id"].as_str().unwrap().to_string();
    // The node saves its table once the join is done: wait until the file shows it.
    let state_dir = dir.path().join("n5");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let saved = dhtnode::net::state::load(&state_dir).unwrap();
        if saved.is_some_and(|s| s.nodes.len() >= 3) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "state never saved with contacts"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    procs[5].signal(libc::SIGKILL);
    procs[5].wait_exit(Duration::from_secs(5));
    // Restart alone (`--bootstrap none`): the saved contacts alone bring it back.
    let again = Proc::dhtnode(
        "node5-again",
        &args(&[
            "bootstrap",
            "--bind",
            &format!("127.{net}.0.6:6881"),
            "--bootstrap",
            "none",
            "--state-dir",
            dir.path().join("n5").to_str().unwrap(),
            "--status-interval",
            "1",
            "--json",
        ]),
    );
    let l = again.wait_line(Duration::from_secs(20), "nodes >= 3", |l| {
        json(l)["nodes"].as_u64().unwrap_or(0) >= 3
    });
    assert_eq!(json(&l)["node_id"].as_str().unwrap(), id);

    // SIGTERM: clean exit with a final status line.
    again.signal(libc::SIGTERM);
    let mut again = again;
    assert!(again.wait_exit(Duration::from_secs(10)).success());
    procs.clear();
}

#[test]
fn exit_codes_follow_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let net = 43;
    let procs = start_dht_network(net, 1, dir.path(), &[]);
    procs[0].wait_line(Duration::from_secs(10), "a status line", |l| {
        json(l).get("node_id").is_some()
    });
    // Bad info-hash: exit 2 with a one-line message naming what was expected.
    let (code, _, err) = run_dhtnode(&args(&["lookup", "not-a-hash"]), Duration::from_secs(10));
    assert_eq!(code, 2);
    assert!(err.contains("40 hex characters"), "{err}");
    // Magnet links are accepted (base32 form); nobody has peers: exit 1.
    let magnet = "magnet:?xt=urn:btih:LJPQ43QNNIWI5G2RH55JTQFSJ3HPRIOD&dn=x";
    let (code, _, err) = run_dhtnode(
        &args(&[
            "lookup",
            magnet,
            "--bind",
            &format!("127.{net}.1.1:0"),
            "--bootstrap",
            &format!("127.{net}.0.1:6881"),
            "--timeout",
            "10",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no peers found"), "{err}");
}
