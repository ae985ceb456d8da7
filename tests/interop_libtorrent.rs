//! Interoperability with a real Mainline DHT implementation: a private DHT of libtorrent 2.0
//! sessions (Debian's python3-libtorrent, driven by tests/interop/lt_dht.py) on loopback.
//!
//! libtorrent needs settings to accept loopback nodes; the harness sets them and
//! tests/interop/README.md says why: `dht_restrict_routing_ips` off (else one node per /24, and
//! every 127.0.x.y shares one), `dht_restrict_search_ips`, `dht_enforce_node_id`,
//! `dht_prefer_verified_node_ids` off, `dht_block_ratelimit` raised, and no public routers
//! (`dht_bootstrap_nodes` empty; sessions are wired with `add_dht_node`).

mod common;

use std::time::{Duration, Instant};

use common::{args, json, libtorrent_python, run_dhtnode, Proc};

struct LtNet {
    proc: Proc,
    nodes: Vec<(String, u16)>,
}

impl LtNet {
    fn start(name: &str, sessions: usize, base_ip: &str) -> LtNet {
        let py = libtorrent_python();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_dht.py");
        let proc = Proc::spawn(
            name,
            py,
            &args(&[
                script,
                "--sessions",
                &sessions.to_string(),
                "--base-ip",
                base_ip,
                "--port",
                "6881",
            ]),
        );
        let ready = proc.wait_line(Duration::from_secs(30), "ready", |l| l.contains("ready"));
        let ready = json(&ready);
        assert_eq!(ready["ready"], true, "libtorrent harness failed: {ready}");
        let nodes = ready["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| {
                (
                    n["ip"].as_str().unwrap().to_string(),
                    n["port"].as_u64().unwrap() as u16,
                )
            })
            .collect();
        LtNet { proc, nodes }
    }

    fn addr(&self, i: usize) -> String {
        format!("{}:{}", self.nodes[i].0, self.nodes[i].1)
    }

    /// Sends a command and returns its reply (bounded wait).
    fn call(&mut self, cmd: serde_json::Value, timeout: Duration) -> serde_json::Value {
        self.proc.send_line(&cmd.to_string());
        let want = cmd["cmd"].as_str().unwrap().to_string();
        let line = self.proc.wait_line(timeout, &want, |l| {
            json(l)["cmd"].as_str() == Some(want.as_str())
        });
        let r = json(&line);
        assert_eq!(r["ok"], true, "libtorrent command {cmd} failed: {r}");
        r
    }
}

#[test]
fn our_node_joins_libtorrent_dht_and_enters_routing_tables() {
    let mut lt = LtNet::start("libtorrent", 8, "127.60.0.1");
    let dir = tempfile::tempdir().unwrap();
    let ours = Proc::dhtnode(
        "dhtnode",
        &args(&[
            "bootstrap",
            "--bind",
            "127.60.1.1:6881",
            "--bootstrap",
            &lt.addr(0),
            "--state-dir",
            dir.path().to_str().unwrap(),
            "--status-interval",
            "1",
            "--json",
        ]),
    );
    // Our table fills with the libtorrent nodes.
    ours.wait_line(Duration::from_secs(20), "nodes >= 7", |l| {
        json(l)["nodes"].as_u64().unwrap_or(0) >= 7
    });
    // And libtorrent's routing tables come to contain our node.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut holders = 0;
    while Instant::now() < deadline {
        holders = 0;
        for s in 0..lt.nodes.len() {
            let r = lt.call(
                serde_json::json!({"cmd": "routing_table", "session": s}),
                Duration::from_secs(10),
            );
            let has = r["nodes"].as_array().unwrap().iter().any(|n| {
                n["ip"].as_str() == Some("127.60.1.1") && n["port"].as_u64() == Some(6881)
            });
            holders += usize::from(has);
        }
        if holders >= 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        holders >= 2,
        "only {holders} libtorrent tables contain our node"
    );
}

#[test]
fn lookup_finds_peer_announced_by_libtorrent() {
    let mut lt = LtNet::start("libtorrent", 8, "127.61.0.1");
    let ih = "61616161616161616161616161616161616161aa";
    let r = lt.call(
        serde_json::json!({"cmd": "announce", "session": 2, "info_hash": ih, "port": 6881}),
        Duration::from_secs(10),
    );
    let port = r["port"].as_u64().unwrap();
    let want = format!("127.61.0.3:{port}");
    // libtorrent's announce completes asynchronously: retry our lookup until it shows up.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (code, out, err) = run_dhtnode(
            &args(&[
                "lookup",
                ih,
                "--bind",
                "127.61.1.1:0",
                "--bootstrap",
                &lt.addr(6),
                "--json",
                "--timeout",
                "10",
            ]),
            Duration::from_secs(20),
        );
        let r = json(out.trim());
        let found = r["peers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p.as_str() == Some(&want));
        if found {
            assert_eq!(code, 0, "{err}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "libtorrent's peer {want} never found: {out} {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn libtorrent_finds_peer_announced_by_dhtnode_lookup() {
    let mut lt = LtNet::start("libtorrent", 8, "127.62.0.1");
    let ih = "62626262626262626262626262626262626262bb";
    let (code, out, err) = run_dhtnode(
        &args(&[
            "lookup",
            ih,
            "--bind",
            "127.62.1.1:0",
            "--bootstrap",
            &lt.addr(1),
            "--announce",
            "6000",
            "--json",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(code, 1, "no peer existed yet: {out} {err}");
    let r = json(out.trim());
    assert!(
        r["announce_acks"].as_u64().unwrap() >= 4,
        "libtorrent nodes must accept our announce_peer (token round trip): {r}"
    );
    let reply = lt.call(
        serde_json::json!({"cmd": "get_peers", "session": 5, "info_hash": ih,
                           "timeout": 20, "until_found": true}),
        Duration::from_secs(30),
    );
    let peers: Vec<&str> = reply["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    assert!(
        peers.contains(&"127.62.1.1:6000"),
        "libtorrent dht_get_peers did not find our peer: {reply}"
    );
}
