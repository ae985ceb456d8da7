//! Lookup-time benchmark (issue 2, item 8): how long `dhtnode lookup` takes to find a peer in a
//! 50-node loopback network, next to libtorrent's `dht_get_peers` in the same network, same run.
//!
//! Run it with
//!
//! ```text
//! cargo bench --bench lookup_time                  # 10 rounds
//! cargo bench --bench lookup_time -- --rounds 20
//! ```
//!
//! The network: 25 dhtnode nodes on 127.72.0.1–25:6881 (24 `dhtnode bootstrap` processes of the
//! release binary, plus one long-lived node inside this program, built with the library's
//! `DhtHandle`, for the warm figure) and 25 libtorrent 2.0 sessions on 127.72.1.1–25:6881
//! (`tests/interop/lt_dht.py`, fully wired among themselves). Our nodes bootstrap through a
//! libtorrent session and our first node; every libtorrent session is then given every one of
//! our nodes with `add_dht_node`, so it is one network. The program waits (bounded) until every
//! table holds at least 15 nodes and reports the table sizes it reached.
//!
//! Then, for each round, a fresh random info-hash is announced: in even rounds by a libtorrent
//! session (harness `announce`: a metadata-less torrent, announced with the session's port), in
//! odd rounds by `dhtnode lookup <ih> --announce PORT` from 127.72.2.x. After a 3 s pause the
//! same info-hash is looked up three ways, in an order that rotates every round:
//! - `cold`: `dhtnode lookup <ih> --json --bootstrap <a random node of the 50>` as a fresh
//!   process: an empty routing table, starting from the one bootstrap address. Its own
//!   `first_peer_ms` and `elapsed_ms` are reported, plus the process wall time;
//! - `warm`: a get_peers lookup on the long-lived in-process dhtnode node (full routing table);
//! - `libtorrent`: the harness `get_peers` on a session that did not announce (a warm table),
//!   one lookup (`until_found` off). Its `elapsed_ms` is observed by polling every ~5 ms (alerts
//!   every ~1 ms); `first_peer_ms` comes from the reply alert's arrival.
//!
//! Printed: one JSON line per round, then the medians per method (over rounds that found the
//! peer; `found` counts them) and the ratios dhtnode / libtorrent.
//!
//! Every wait is bounded and all child processes are killed when the program ends, also on
//! panic.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::Proc;
use dhtnode::id::Id;
use dhtnode::net::{DhtHandle, LookupUpdate, NodeOptions};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// dhtnode nodes (the last one lives in this process).
const OURS: usize = 25;
/// libtorrent sessions.
const LT: usize = 25;
/// Port of every node.
const PORT: u16 = 6881;
/// Timeout of each lookup, seconds.
const LOOKUP_TIMEOUT: u64 = 10;
/// Bound on forming the network.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Table size every node should reach before measuring.
const MIN_TABLE: usize = 15;
/// Pause between an announce and the lookups.
const SETTLE: Duration = Duration::from_secs(3);

fn our_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 72, 0, 1 + i as u8)
}

fn lt_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 72, 1, 1 + i as u8)
}

/// Runs `dhtnode lookup ...` to completion (bounded); returns its JSON report and wall time.
fn run_lookup(bin: &str, args: &[String]) -> (Value, f64) {
    let started = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dhtnode lookup");
    let limit = Duration::from_secs(LOOKUP_TIMEOUT + 10);
    while child.try_wait().expect("try_wait").is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return (json!({"error": "did not exit"}), ms(started.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let wall = ms(started.elapsed());
    let out = child.wait_with_output().expect("lookup output");
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| json!({"error": format!("no JSON: {text}")}));
    (v, wall)
}

/// One warm lookup on the in-process node: (peers, first_peer_ms, elapsed_ms).
async fn warm_lookup(node: &DhtHandle, ih: Id) -> Value {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(LOOKUP_TIMEOUT);
    let mut peers: Vec<String> = Vec::new();
    let mut first = None;
    let mut stream = match node.get_peers(ih) {
        Ok(s) => s,
        Err(e) => return json!({"error": e.to_string()}),
    };
    let mut stats = Value::Null;
    while let Ok(Some(u)) = tokio::time::timeout_at(deadline, stream.next_update()).await {
        match u {
            LookupUpdate::Peers(ps) => {
                first.get_or_insert(ms(started.elapsed()));
                peers.extend(ps.iter().map(|p| p.to_string()));
            }
            LookupUpdate::Done(s) => {
                stats = json!({"nodes_queried": s.stats.queried, "responses": s.stats.responses});
                break;
            }
            LookupUpdate::AnnounceAcked(_) => {}
        }
    }
    peers.sort();
    peers.dedup();
    json!({
        "peers": peers,
        "first_peer_ms": first,
        "elapsed_ms": ms(started.elapsed()),
        "nodes_queried": stats["nodes_queried"],
        "responses": stats["responses"],
    })
}

/// Milliseconds with microsecond resolution.
fn ms(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

fn has_peer(r: &Value, want: &str) -> bool {
    r["peers"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p.as_str() == Some(want)))
}

/// Medians of one method's rounds (those that found the announced peer).
fn summarize(rounds: &[Value], method: &str) -> Value {
    let found: Vec<&Value> = rounds
        .iter()
        .filter(|r| r[method]["found"] == true)
        .collect();
    let col = |f: &str| -> Option<f64> {
        median(found.iter().filter_map(|r| r[method][f].as_f64()).collect())
    };
    json!({
        "found": found.len(),
        "rounds": rounds.len(),
        "first_peer_ms": col("first_peer_ms"),
        "elapsed_ms": col("elapsed_ms"),
        "wall_ms": col("wall_ms"),
    })
}

fn ratio(a: &Value, b: &Value, f: &str) -> Value {
    match (a[f].as_f64(), b[f].as_f64()) {
        (Some(x), Some(y)) if y > 0.0 => json!((x / y * 100.0).round() / 100.0),
        _ => Value::Null,
    }
}

fn main() {
    let mut rounds_n = 10usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--rounds" {
            rounds_n = args
                .next()
                .and_then(|v| v.parse().ok())
                .expect("--rounds wants a number");
        }
    }
    // Cargo builds the binary for `cargo bench` and says where it is.
    let bin = common::bin().to_string();
    let mut rng = SmallRng::seed_from_u64(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");

    // libtorrent sessions first, fully wired among themselves.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_dht.py");
    let mut lt = Proc::spawn(
        "libtorrent",
        "/usr/bin/python3",
        &[
            script.to_string(),
            "--sessions".into(),
            LT.to_string(),
            "--base-ip".into(),
            lt_ip(0).to_string(),
            "--port".into(),
            PORT.to_string(),
        ],
    );
    let ready = lt
        .wait_json(Duration::from_secs(30), |v| v.get("ready").is_some())
        .expect("libtorrent harness not ready within 30 s");
    assert_eq!(ready["ready"], true, "libtorrent harness failed: {ready}");

    // Our bootstrap processes: each joins through one libtorrent session and our first node.
    let dirs: Vec<tempfile::TempDir> = (0..OURS - 1)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let ours: Vec<Proc> = (0..OURS - 1)
        .map(|i| {
            Proc::spawn(
                &format!("dhtnode {i}"),
                &bin,
                &[
                    "bootstrap".into(),
                    "--bind".into(),
                    format!("{}:{PORT}", our_ip(i)),
                    "--bootstrap".into(),
                    format!("{}:{PORT}", lt_ip(i % LT)),
                    "--bootstrap".into(),
                    format!("{}:{PORT}", our_ip(0)),
                    "--state-dir".into(),
                    dirs[i].path().to_str().unwrap().into(),
                    "--status-interval".into(),
                    "1".into(),
                    "--json".into(),
                ],
            )
        })
        .collect();
    for p in &ours {
        p.wait_json(Duration::from_secs(15), |v| v["node_id"].is_string())
            .unwrap_or_else(|| panic!("{}: no status line within 15 s", p.name));
    }
    // The warm node, in this process.
    let warm = rt
        .block_on(DhtHandle::spawn(NodeOptions {
            bind: SocketAddr::V4(SocketAddrV4::new(our_ip(OURS - 1), PORT)),
            bootstrap: vec![
                format!("{}:{PORT}", lt_ip(LT - 1)),
                format!("{}:{PORT}", our_ip(1)),
            ],
            ..NodeOptions::default()
        }))
        .expect("start the in-process node");
    // Every libtorrent session learns every one of our nodes.
    for s in 0..LT {
        for i in 0..OURS {
            lt.call_json(
                json!({"cmd": "add_node", "session": s, "addr": format!("{}:{PORT}", our_ip(i))}),
                Duration::from_secs(10),
            );
        }
    }

    // Wait until the tables are filled (bounded).
    let t0 = Instant::now();
    let mut our_tables = vec![0usize; OURS];
    let mut lt_tables = vec![0usize; LT];
    loop {
        for (i, p) in ours.iter().enumerate() {
            if let Some(s) = p.latest_json() {
                our_tables[i] = s["good_nodes"].as_u64().unwrap_or(0) as usize;
            }
        }
        our_tables[OURS - 1] = rt.block_on(warm.stats()).map(|s| s.good_nodes).unwrap_or(0);
        for (s, n) in lt_tables.iter_mut().enumerate() {
            let r = lt.call_json(
                json!({"cmd": "stats", "session": s}),
                Duration::from_secs(10),
            );
            *n = r["routing_table_nodes"].as_u64().unwrap_or(0) as usize;
        }
        let min = our_tables
            .iter()
            .chain(&lt_tables)
            .min()
            .copied()
            .unwrap_or(0);
        if min >= MIN_TABLE || t0.elapsed() > JOIN_TIMEOUT {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let net = json!({
        "join_secs": (t0.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        "dhtnode_good_nodes": our_tables,
        "libtorrent_table_nodes": lt_tables,
    });
    println!("network: {net}");

    let all_nodes: Vec<String> = (0..OURS)
        .map(|i| format!("{}:{PORT}", our_ip(i)))
        .chain((0..LT).map(|i| format!("{}:{PORT}", lt_ip(i))))
        .collect();
    let mut rounds = Vec::new();
    for r in 0..rounds_n {
        let ih = Id::random(&mut rng);
        let hex = ih.to_hex();
        // Announce.
        let (announcer, want, announcer_lt) = if r % 2 == 0 {
            let s = rng.gen_range(0..LT);
            let rep = lt.call_json(
                json!({"cmd": "announce", "session": s, "info_hash": hex, "port": PORT}),
                Duration::from_secs(10),
            );
            let port = rep["port"].as_u64().unwrap_or(0);
            (
                json!({"by": "libtorrent", "session": s, "method": rep["method"]}),
                format!("{}:{port}", lt_ip(s)),
                Some(s),
            )
        } else {
            let from = Ipv4Addr::new(127, 72, 2, 1 + (r % 250) as u8);
            let port = 30_000 + r as u16;
            let boot = &all_nodes[rng.gen_range(0..all_nodes.len())];
            let (rep, _) = run_lookup(
                &bin,
                &[
                    "lookup".into(),
                    hex.clone(),
                    "--announce".into(),
                    port.to_string(),
                    "--bind".into(),
                    format!("{from}:0"),
                    "--bootstrap".into(),
                    boot.clone(),
                    "--timeout".into(),
                    LOOKUP_TIMEOUT.to_string(),
                    "--json".into(),
                ],
            );
            (
                json!({"by": "dhtnode lookup --announce", "bootstrap": boot,
                       "announced_to": rep["announced_to"], "acks": rep["announce_acks"]}),
                format!("{from}:{port}"),
                None,
            )
        };
        std::thread::sleep(SETTLE);

        // Measure, rotating the order.
        let mut cold = Value::Null;
        let mut warm_r = Value::Null;
        let mut lt_r = Value::Null;
        for step in 0..3 {
            match (step + r) % 3 {
                0 => {
                    let boot = all_nodes[rng.gen_range(0..all_nodes.len())].clone();
                    let (mut v, wall) = run_lookup(
                        &bin,
                        &[
                            "lookup".into(),
                            hex.clone(),
                            "--json".into(),
                            "--bootstrap".into(),
                            boot.clone(),
                            "--bind".into(),
                            format!("127.72.3.{}:0", 1 + r % 250),
                            "--timeout".into(),
                            LOOKUP_TIMEOUT.to_string(),
                        ],
                    );
                    v["wall_ms"] = json!(wall);
                    v["bootstrap"] = json!(boot);
                    cold = v;
                }
                1 => warm_r = rt.block_on(warm_lookup(&warm, ih)),
                _ => {
                    let s = loop {
                        let s = rng.gen_range(0..LT);
                        if Some(s) != announcer_lt {
                            break s;
                        }
                    };
                    let mut v = lt.call_json(
                        json!({"cmd": "get_peers", "session": s, "info_hash": hex,
                               "timeout": LOOKUP_TIMEOUT, "until_found": false}),
                        Duration::from_secs(LOOKUP_TIMEOUT + 10),
                    );
                    v["session"] = json!(s);
                    lt_r = v;
                }
            }
        }
        let mut row =
            json!({"round": r + 1, "info_hash": hex, "announced": announcer, "peer": want});
        for (name, v) in [("cold", cold), ("warm", warm_r), ("libtorrent", lt_r)] {
            let found = has_peer(&v, &want);
            row[name] = json!({
                "found": found,
                "first_peer_ms": v["first_peer_ms"],
                "elapsed_ms": v["elapsed_ms"],
                "wall_ms": v.get("wall_ms").cloned().unwrap_or(Value::Null),
                "peers": v["peers"].as_array().map_or(0, |p| p.len()),
                "nodes_queried": v.get("nodes_queried").cloned().unwrap_or(Value::Null),
                "responses": v.get("responses").cloned().unwrap_or(Value::Null),
            });
        }
        println!("{row}");
        rounds.push(row);
    }

    let cold = summarize(&rounds, "cold");
    let warm_s = summarize(&rounds, "warm");
    let lt_s = summarize(&rounds, "libtorrent");
    let summary = json!({
        "network": net,
        "dhtnode_lookup_cold": cold,
        "dhtnode_warm": warm_s,
        "libtorrent_get_peers": lt_s,
        "ratio_cold_vs_libtorrent": {
            "first_peer_ms": ratio(&cold, &lt_s, "first_peer_ms"),
            "elapsed_ms": ratio(&cold, &lt_s, "elapsed_ms"),
        },
        "ratio_cold_wall_vs_libtorrent_first_peer": match (cold["wall_ms"].as_f64(), lt_s["first_peer_ms"].as_f64()) {
            (Some(x), Some(y)) if y > 0.0 => json!((x / y * 100.0).round() / 100.0),
            _ => Value::Null,
        },
        "resolution": "dhtnode lookup reports whole ms (0 = under 1 ms); warm and wall_ms are µs-resolved; \
            libtorrent's first_peer_ms is bounded below by the harness's ~1 ms alert polling and its \
            elapsed_ms by its ~5 ms lookup-finished polling",
        "ratio_warm_vs_libtorrent": {
            "first_peer_ms": ratio(&warm_s, &lt_s, "first_peer_ms"),
            "elapsed_ms": ratio(&warm_s, &lt_s, "elapsed_ms"),
        },
    });
    println!("{summary}");
    rt.block_on(warm.shutdown());
    let _ = lt.call_json(json!({"cmd": "quit"}), Duration::from_secs(5));
    drop(ours);
    drop(lt);
}
