//! Memory benchmark (issue 2, item 8): resident set size of a `dhtnode bootstrap` node that
//! holds a full routing table and 100,000 stored peers. Target: ≤ 30 MB.
//!
//! Run it with
//!
//! ```text
//! cargo bench --bench rss                       # 3 runs, dhtnode and libtorrent
//! cargo bench --bench rss -- --runs 5 --no-libtorrent
//! ```
//!
//! Options: `--runs N` (default 3), `--buckets B` (buckets filled with 8 nodes each, default 21:
//! prefixes 0..=19 plus the bucket holding our own id, which is about what a node of the public
//! DHT has), `--peers P` (default 100,000), `--infohashes H` (default 200),
//! `--no-libtorrent`.
//!
//! What one run does:
//! 1. builds and starts `target/release/dhtnode bootstrap --bind 127.70.0.1:6881 --bootstrap none
//!    --state-dir <tmp> --status-interval 1 --json` and reads its node id from the status JSON;
//! 2. fills its routing table: fake DHT nodes, one UDP socket each on 127.71.0.x, with ids
//!    sharing exactly `i` leading bits with the node's id (8 per bucket), send it pings; it
//!    verifies unknown queriers with a ping of its own (at most 20/s), which the fake node
//!    answers, and the fake node enters the table. This goes on until the status line shows
//!    `good_nodes ≥ 8 × buckets` (bounded: 60 s);
//! 3. stores the peers: announcers on 500 source addresses (127.71.2.x–127.71.4.x), each with a
//!    read-only (BEP 43) id, ask get_peers for a write token (tokens are bound to the source
//!    IP and the info-hash) and then send announce_peer for each of the `H` info-hashes, `P / H` distinct
//!    sources per info-hash, two queries in flight per source, with retries, until every
//!    announce is acknowledged and `stored_peers` reaches `P` (bounded: 120 s);
//! 4. reads `VmRSS` and `VmHWM` from `/proc/<pid>/status` and prints one JSON object per run,
//!    then the medians.
//!
//! The libtorrent figure, for comparison, uses the same load against one libtorrent 2.0 session
//! (`tests/interop/lt_dht.py --single-node`, Debian's python3-libtorrent). Its fake nodes are
//! also given to it with `add_dht_node`, since libtorrent does not add nodes that merely queried
//! it. libtorrent runs inside a Python interpreter, so both its raw RSS and the RSS increase over
//! the idle session (measured just before the load) are reported.
//!
//! Every wait is bounded, and the child processes are killed when the program ends, also on
//! panic.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;

use common::{args, Proc};
use dhtnode::id::Id;
use dhtnode::krpc::{Body, Message, Method, Query, Response};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde_json::{json, Value};

/// Nodes per bucket (BEP 5's k).
const K: usize = 8;
/// Where the node under test listens.
const TARGET_IP: Ipv4Addr = Ipv4Addr::new(127, 70, 0, 1);
/// Its port.
const TARGET_PORT: u16 = 6881;
/// Distinct announcing source addresses.
/// 500 sources × 200 info-hashes each stays within the store's per-IP cap (200 entries by
/// default), which a real flood of announces from few IPs is refused at.
const SOURCES: usize = 500;
/// Announces each source keeps in flight.
const WINDOW: usize = 2;
/// Bound on filling the routing table.
const FILL_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on storing the peers.
const STORE_TIMEOUT: Duration = Duration::from_secs(120);
/// A query unanswered this long is sent again.
const RETRY_AFTER: Duration = Duration::from_secs(2);

/// Command-line options.
struct Opts {
    runs: usize,
    buckets: usize,
    peers: usize,
    infohashes: usize,
    libtorrent: bool,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        runs: 3,
        buckets: 21,
        peers: 100_000,
        infohashes: 200,
        libtorrent: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> usize {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} wants a number"))
        };
        match a.as_str() {
            "--runs" => o.runs = num("--runs").max(1),
            "--buckets" => o.buckets = num("--buckets").clamp(1, 150),
            "--peers" => o.peers = num("--peers"),
            "--infohashes" => o.infohashes = num("--infohashes").max(1),
            "--no-libtorrent" => o.libtorrent = false,
            // `cargo bench` passes `--bench`; ignore it and anything else unknown.
            _ => {}
        }
    }
    assert!(
        o.peers.div_ceil(o.infohashes) <= SOURCES,
        "at most {SOURCES} peers per info-hash (one per source address)"
    );
    o
}

/// (VmRSS, VmHWM) of a process in MB (MiB).
fn rss_mb(pid: u32) -> (f64, f64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| -> f64 {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn bind(ip: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddrV4::new(ip, 0))
        .unwrap_or_else(|e| panic!("bind {ip}: {e} (all of 127/8 must be loopback)"));
    s.set_nonblocking(true).expect("nonblocking");
    s
}

/// Waits up to `timeout` for any of `socks` to be readable; returns the readable indices.
fn poll_readable(socks: &[UdpSocket], timeout: Duration) -> Vec<usize> {
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
    let n = unsafe {
        libc::poll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            timeout.as_millis() as libc::c_int,
        )
    };
    if n <= 0 {
        return Vec::new();
    }
    fds.iter()
        .enumerate()
        .filter(|(_, f)| f.revents & libc::POLLIN != 0)
        .map(|(i, _)| i)
        .collect()
}

fn query(tid: &[u8], id: Id, read_only: bool, method: Method) -> Vec<u8> {
    Message {
        tid: tid.to_vec(),
        version: None,
        ip: None,
        read_only,
        body: Body::Query(Query {
            id,
            method,
            want: dhtnode::krpc::Want::NONE,
        }),
    }
    .encode()
}

/// The fake nodes: sockets plus ids, answering every query until told to stop.
struct FakeNodes {
    stop: Arc<AtomicBool>,
    /// Fake nodes that have been pinged by the target (and answered).
    verified: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FakeNodes {
    /// Starts the fake nodes for a table centred on `own`; returns them and their addresses.
    fn start(own: Id, buckets: usize, target: SocketAddrV4) -> (FakeNodes, Vec<SocketAddrV4>) {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut nodes = Vec::new();
        for b in 0..buckets {
            for _ in 0..K {
                let j = nodes.len();
                let ip = Ipv4Addr::new(127, 71, (j / 250) as u8, (1 + j % 250) as u8);
                nodes.push((own.random_in_bucket(b, &mut rng), bind(ip)));
            }
        }
        let addrs = nodes
            .iter()
            .map(|(_, s)| match s.local_addr().expect("local addr") {
                std::net::SocketAddr::V4(a) => a,
                other => panic!("not v4: {other}"),
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let verified = Arc::new(AtomicUsize::new(0));
        let (st, ver) = (stop.clone(), verified.clone());
        let thread = std::thread::spawn(move || {
            let socks: Vec<UdpSocket> = nodes.iter().map(|(_, s)| s.try_clone().unwrap()).collect();
            let mut pinged = vec![false; nodes.len()];
            let mut last_round = Instant::now() - Duration::from_secs(10);
            let mut buf = [0u8; 2048];
            let mut tid = 0u16;
            while !st.load(Ordering::Relaxed) {
                // Once a second, every fake node not yet verified queries the target.
                if last_round.elapsed() >= Duration::from_secs(1) {
                    last_round = Instant::now();
                    for (i, (id, s)) in nodes.iter().enumerate() {
                        if !pinged[i] {
                            tid = tid.wrapping_add(1);
                            let _ = s.send_to(
                                &query(&tid.to_be_bytes(), *id, false, Method::Ping),
                                target,
                            );
                        }
                    }
                }
                for i in poll_readable(&socks, Duration::from_millis(50)) {
                    while let Ok((n, from)) = socks[i].recv_from(&mut buf) {
                        let Ok(msg) = Message::decode(&buf[..n]) else {
                            continue;
                        };
                        let Body::Query(q) = msg.body else { continue };
                        if !pinged[i] && matches!(q.method, Method::Ping) {
                            pinged[i] = true;
                            ver.fetch_add(1, Ordering::Relaxed);
                        }
                        let reply = Message {
                            tid: msg.tid,
                            version: None,
                            ip: None,
                            read_only: false,
                            body: Body::Response(Response {
                                id: nodes[i].0,
                                token: matches!(q.method, Method::GetPeers { .. })
                                    .then(|| b"tok".to_vec()),
                                ..Response::default()
                            }),
                        };
                        let _ = socks[i].send_to(&reply.encode(), from);
                    }
                }
            }
        });
        (
            FakeNodes {
                stop,
                verified,
                thread: Some(thread),
            },
            addrs,
        )
    }
}

impl Drop for FakeNodes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Outcome of the announce phase.
struct StoreResult {
    acked: usize,
    errors: usize,
    retries: usize,
    secs: f64,
}

/// One query of the announce phase that awaits its answer.
struct Pending {
    hash: usize,
    /// `None`: the get_peers that fetches the token; `Some`: the announce_peer with it.
    token: Option<Vec<u8>>,
    sent: Instant,
}

/// Announces `peers` peers over `infohashes` info-hashes from `SOURCES` source addresses: for
/// each (source, info-hash) a get_peers for the write token (libtorrent's tokens depend on the
/// info-hash too), then announce_peer with it. `stored` reports the target's current
/// stored-peer count (may be slow; called about once a second).
fn store_peers(
    target: SocketAddrV4,
    own: Id,
    peers: usize,
    infohashes: usize,
    mut stored: impl FnMut() -> Option<usize>,
) -> StoreResult {
    let mut rng = SmallRng::seed_from_u64(11);
    let hashes: Vec<Id> = (0..infohashes).map(|_| Id::random(&mut rng)).collect();
    let per_hash = peers.div_ceil(infohashes);
    let socks: Vec<UdpSocket> = (0..SOURCES)
        .map(|k| {
            bind(Ipv4Addr::new(
                127,
                71,
                2 + (k / 200) as u8,
                1 + (k % 200) as u8,
            ))
        })
        .collect();
    let ids: Vec<Id> = (0..SOURCES)
        .map(|_| own.random_in_bucket(0, &mut rng))
        .collect();
    // Info-hash h is announced by `per_hash` consecutive sources starting at a per-hash offset,
    // so every source gets about the same number of announces and no source announces twice.
    let mut work: Vec<Vec<usize>> = vec![Vec::new(); SOURCES];
    let mut total = 0;
    'outer: for h in 0..infohashes {
        for j in 0..per_hash {
            if total == peers {
                break 'outer;
            }
            work[(h * 7 + j) % SOURCES].push(h);
            total += 1;
        }
    }
    let mut next = vec![0usize; SOURCES];
    let mut done = vec![0usize; SOURCES];
    let mut inflight: Vec<HashMap<u32, Pending>> = (0..SOURCES).map(|_| HashMap::new()).collect();
    let mut tid: u32 = 0;
    let (mut acked, mut errors, mut retries) = (0, 0, 0);
    let started = Instant::now();
    let mut last_check = Instant::now();
    let mut buf = [0u8; 2048];
    let send = |k: usize, tid: u32, p: &Pending| {
        let m = match &p.token {
            None => Method::GetPeers {
                info_hash: hashes[p.hash],
            },
            Some(t) => Method::AnnouncePeer {
                info_hash: hashes[p.hash],
                port: 20_000 + k as u16,
                implied_port: false,
                token: t.clone(),
            },
        };
        let _ = socks[k].send_to(&query(&tid.to_be_bytes(), ids[k], true, m), target);
    };
    while started.elapsed() < STORE_TIMEOUT {
        // Resend what timed out; top up every source's window.
        for k in 0..SOURCES {
            let stale: Vec<u32> = inflight[k]
                .iter()
                .filter(|(_, p)| p.sent.elapsed() > RETRY_AFTER)
                .map(|(t, _)| *t)
                .collect();
            for t in stale {
                let mut p = inflight[k].remove(&t).unwrap();
                retries += 1;
                tid += 1;
                p.sent = Instant::now();
                send(k, tid, &p);
                inflight[k].insert(tid, p);
            }
            while inflight[k].len() < WINDOW && next[k] < work[k].len() {
                let p = Pending {
                    hash: work[k][next[k]],
                    token: None,
                    sent: Instant::now(),
                };
                next[k] += 1;
                tid += 1;
                send(k, tid, &p);
                inflight[k].insert(tid, p);
            }
        }
        let all_done = (0..SOURCES).all(|k| done[k] == work[k].len());
        if all_done || last_check.elapsed() >= Duration::from_secs(1) {
            last_check = Instant::now();
            if stored().is_some_and(|n| n >= peers) {
                break;
            }
            if all_done {
                // Everything answered yet not all stored: give the status a moment, bounded.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        for k in poll_readable(&socks, Duration::from_millis(20)) {
            while let Ok((n, _)) = socks[k].recv_from(&mut buf) {
                let Ok(msg) = Message::decode(&buf[..n]) else {
                    continue;
                };
                let Ok(t) = <[u8; 4]>::try_from(msg.tid.as_slice()) else {
                    continue;
                };
                let Some(p) = inflight[k].remove(&u32::from_be_bytes(t)) else {
                    continue;
                };
                match (msg.body, p.token) {
                    (Body::Response(r), None) => match r.token {
                        Some(token) => {
                            let p = Pending {
                                hash: p.hash,
                                token: Some(token),
                                sent: Instant::now(),
                            };
                            tid += 1;
                            send(k, tid, &p);
                            inflight[k].insert(tid, p);
                        }
                        None => {
                            errors += 1;
                            done[k] += 1;
                        }
                    },
                    (Body::Response(_), Some(_)) => {
                        acked += 1;
                        done[k] += 1;
                    }
                    _ => {
                        errors += 1;
                        done[k] += 1;
                    }
                }
            }
        }
    }
    StoreResult {
        acked,
        errors,
        retries,
        secs: started.elapsed().as_secs_f64(),
    }
}

fn median(v: &mut [f64]) -> f64 {
    let v: &mut Vec<f64> = &mut v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// One run against `dhtnode bootstrap`.
fn run_dhtnode(bin: &str, o: &Opts) -> Value {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr = SocketAddrV4::new(TARGET_IP, TARGET_PORT);
    let node = Proc::spawn(
        "dhtnode",
        bin,
        &args(&[
            "bootstrap",
            "--bind",
            &addr.to_string(),
            "--bootstrap",
            "none",
            "--state-dir",
            dir.path().to_str().unwrap(),
            "--status-interval",
            "1",
            "--json",
            // Measures memory, not the reply budget: answer the whole load.
            "--reply-rate-limit",
            "0",
        ]),
    );
    let first = node
        .wait_json(Duration::from_secs(15), |v| v["node_id"].is_string())
        .expect("dhtnode printed no status line within 15 s");
    let own = Id::from_hex(first["node_id"].as_str().unwrap()).expect("node id");
    let (idle_rss, _) = rss_mb(node.pid());
    // The latest status line.
    let latest = std::cell::RefCell::new(first);
    let status = |f: &str| -> usize {
        let mut l = latest.borrow_mut();
        if let Some(v) = node.latest_json() {
            *l = v;
        }
        l[f].as_u64().unwrap_or(0) as usize
    };

    let want = K * o.buckets;
    let t0 = Instant::now();
    let (fake, _) = FakeNodes::start(own, o.buckets, addr);
    while t0.elapsed() < FILL_TIMEOUT && status("good_nodes") < want {
        std::thread::sleep(Duration::from_millis(200));
    }
    let fill_secs = t0.elapsed().as_secs_f64();
    let store = store_peers(addr, own, o.peers, o.infohashes, || {
        Some(status("stored_peers"))
    });
    // Let a status line pass, then measure.
    std::thread::sleep(Duration::from_millis(1500));
    status("nodes");
    let (rss, hwm) = rss_mb(node.pid());
    let verified = fake.verified.load(Ordering::Relaxed);
    drop(fake);
    let s = latest.borrow().clone();
    drop(node);
    json!({
        "impl": "dhtnode",
        "nodes": s["nodes"],
        "good_nodes": s["good_nodes"],
        "buckets": s["buckets"],
        "stored_infohashes": s["stored_infohashes"],
        "stored_peers": s["stored_peers"],
        "rss_mb": round2(rss),
        "hwm_mb": round2(hwm),
        "idle_rss_mb": round2(idle_rss),
        "fake_nodes_verified": verified,
        "fill_secs": round2(fill_secs),
        "announces_acked": store.acked,
        "announce_errors": store.errors,
        "retries": store.retries,
        "store_secs": round2(store.secs),
    })
}

/// One run against a single libtorrent session (`lt_dht.py --single-node`).
fn run_libtorrent(o: &Opts) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_dht.py");
    let ip = Ipv4Addr::new(127, 70, 1, 1);
    let mut lt = Proc::spawn(
        "libtorrent",
        "/usr/bin/python3",
        &args(&[
            script,
            "--single-node",
            "--base-ip",
            &ip.to_string(),
            "--port",
            &TARGET_PORT.to_string(),
        ]),
    );
    let ready = lt
        .wait_json(Duration::from_secs(30), |v| v.get("ready").is_some())
        .expect("libtorrent harness not ready within 30 s");
    assert_eq!(ready["ready"], true, "libtorrent harness failed: {ready}");
    let own = Id::from_hex(ready["nodes"][0]["id"].as_str().unwrap()).expect("lt node id");
    let addr = SocketAddrV4::new(ip, TARGET_PORT);
    std::thread::sleep(Duration::from_secs(1));
    let (idle_rss, _) = rss_mb(lt.pid());
    let stats = |lt: &mut Proc| {
        Some(lt.call_json(
            json!({"cmd": "stats", "session": 0}),
            Duration::from_secs(15),
        ))
    };

    let want = K * o.buckets;
    let t0 = Instant::now();
    let (fake, addrs) = FakeNodes::start(own, o.buckets, addr);
    for a in &addrs {
        lt.call_json(
            json!({"cmd": "add_node", "session": 0, "addr": a.to_string()}),
            Duration::from_secs(15),
        );
    }
    let mut table = 0;
    let mut grew = Instant::now();
    while t0.elapsed() < FILL_TIMEOUT {
        let now = stats(&mut lt)
            .and_then(|s| s["routing_table_nodes"].as_u64())
            .unwrap_or(0) as usize;
        if now > table {
            grew = Instant::now();
        }
        table = now;
        // libtorrent's table layout differs from ours (it stops at 160 of the 168 here): stop
        // once it has not grown for 10 s.
        if table >= want || (table > 0 && grew.elapsed() > Duration::from_secs(10)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let fill_secs = t0.elapsed().as_secs_f64();
    let store = store_peers(addr, own, o.peers, o.infohashes, || {
        stats(&mut lt).and_then(|s| s["counters"]["dht.dht_peers"].as_u64().map(|n| n as usize))
    });
    std::thread::sleep(Duration::from_millis(1500));
    let s = stats(&mut lt).unwrap_or(Value::Null);
    let (rss, hwm) = rss_mb(lt.pid());
    let verified = fake.verified.load(Ordering::Relaxed);
    drop(fake);
    drop(lt);
    json!({
        "impl": "libtorrent",
        "nodes": s["routing_table_nodes"],
        "nodes_at_fill_end": table,
        "stored_infohashes": s["counters"]["dht.dht_torrents"],
        "stored_peers": s["counters"]["dht.dht_peers"],
        "rss_mb": round2(rss),
        "hwm_mb": round2(hwm),
        "idle_rss_mb": round2(idle_rss),
        "rss_minus_idle_mb": round2(rss - idle_rss),
        "fake_nodes_verified": verified,
        "fill_secs": round2(fill_secs),
        "announces_acked": store.acked,
        "announce_errors": store.errors,
        "retries": store.retries,
        "store_secs": round2(store.secs),
    })
}

fn libtorrent_available() -> bool {
    Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Median of field `f` over `runs`.
fn median_of(runs: &[Value], f: &str) -> f64 {
    let mut v: Vec<f64> = runs.iter().filter_map(|r| r[f].as_f64()).collect();
    round2(median(&mut v))
}

fn main() {
    let o = parse_opts();
    // Cargo builds the binary for `cargo bench` and says where it is.
    let bin = common::bin();
    let mut ours = Vec::new();
    for i in 0..o.runs {
        let r = run_dhtnode(bin, &o);
        println!("run {}: {r}", i + 1);
        ours.push(r);
    }
    let mut theirs = Vec::new();
    if o.libtorrent {
        if libtorrent_available() {
            for i in 0..o.runs {
                let r = run_libtorrent(&o);
                println!("run {}: {r}", i + 1);
                theirs.push(r);
            }
        } else {
            eprintln!("python3-libtorrent not available: skipping the libtorrent figure");
        }
    }
    let mut summary = json!({
        "runs": o.runs,
        "target_peers": o.peers,
        "target_nodes": K * o.buckets,
        "dhtnode": {
            "nodes": median_of(&ours, "nodes"),
            "good_nodes": median_of(&ours, "good_nodes"),
            "stored_peers": median_of(&ours, "stored_peers"),
            "rss_mb": median_of(&ours, "rss_mb"),
            "hwm_mb": median_of(&ours, "hwm_mb"),
            "idle_rss_mb": median_of(&ours, "idle_rss_mb"),
        },
        "target_rss_mb": 30,
    });
    if !theirs.is_empty() {
        summary["libtorrent"] = json!({
            "nodes": median_of(&theirs, "nodes"),
            "stored_peers": median_of(&theirs, "stored_peers"),
            "rss_mb": median_of(&theirs, "rss_mb"),
            "hwm_mb": median_of(&theirs, "hwm_mb"),
            "idle_rss_mb": median_of(&theirs, "idle_rss_mb"),
            "rss_minus_idle_mb": median_of(&theirs, "rss_minus_idle_mb"),
        });
    }
    println!("{summary}");
}
