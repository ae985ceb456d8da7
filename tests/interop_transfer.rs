//! Transfers between `dhtnode` and a real BitTorrent client, libtorrent 2.0 (Debian's
//! python3-libtorrent, driven by tests/interop/lt_torrent.py), over a loopback DHT with no
//! tracker anywhere:
//! - a libtorrent session seeds a trackerless torrent into a DHT of libtorrent nodes
//!   (tests/interop/lt_dht.py) and `dhtnode fetch <infohash>` downloads it, metadata via BEP 9;
//! - `dhtnode seed` serves into a DHT of `dhtnode bootstrap` nodes and a libtorrent session
//!   downloads it knowing only the info-hash.
//!
//! Single-file and multi-file torrents each way; bytes must be identical. Each test owns one
//! 127.N.0.0/16 range (N = 96..=99). libtorrent runs TCP only (uTP off) with the loopback
//! settings of lt_dht.py (see tests/interop/README.md).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::files::{assert_same_file, files_under, write_random};
use common::{
    args, json, libtorrent_python, node_addr, run_dhtnode, start_dht_network, wait_announced, Proc,
};

const SCRIPT_DHT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_dht.py");
const SCRIPT_TORRENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_torrent.py");

// ----- data -------------------------------------------------------------------------------

/// A single file of a few MiB, not a multiple of any piece size.
fn make_single(dir: &Path, seed: u64) -> PathBuf {
    let p = dir.join("payload.bin");
    write_random(&p, 3 * 1024 * 1024 + 9_876, seed);
    p
}

/// A directory with nested files, an empty file, and sizes off piece boundaries.
fn make_tree(dir: &Path, seed: u64) -> PathBuf {
    let root = dir.join("tree");
    write_random(&root.join("a.bin"), 1024 * 1024 + 11, seed);
    write_random(&root.join("sub").join("b.bin"), 1536 * 1024 + 5, seed + 1);
    write_random(
        &root.join("sub").join("deep").join("c.txt"),
        4_999,
        seed + 2,
    );
    std::fs::write(root.join("sub").join("empty.txt"), b"").unwrap();
    write_random(&root.join("z.bin"), 123_457, seed + 3);
    root
}

/// `got` (a file or directory) has the same files and bytes as `want`.
fn assert_same(want: &Path, got: &Path) {
    if want.is_file() {
        return assert_same_file(want, got);
    }
    let w = files_under(want);
    let g = files_under(got);
    assert_eq!(g, w, "files under {} differ from the source", got.display());
    for rel in &w {
        assert_same_file(&want.join(rel), &got.join(rel));
    }
}

// ----- libtorrent processes ---------------------------------------------------------------

/// A private DHT of libtorrent sessions (lt_dht.py) on 127.NET.0.1.., fully wired.
fn start_lt_dht(net: u8, sessions: usize) -> (Proc, Vec<String>) {
    let py = libtorrent_python();
    let proc = Proc::spawn(
        "lt_dht",
        py,
        &args(&[
            SCRIPT_DHT,
            "--sessions",
            &sessions.to_string(),
            "--base-ip",
            &format!("127.{net}.0.1"),
            "--port",
            "6881",
        ]),
    );
    let ready = json(&proc.wait_line(Duration::from_secs(30), "ready", |l| l.contains("ready")));
    assert_eq!(ready["ready"], true, "lt_dht.py failed: {ready}");
    let nodes = ready["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| format!("{}:{}", n["ip"].as_str().unwrap(), n["port"]))
        .collect();
    (proc, nodes)
}

/// One libtorrent session (lt_torrent.py) on `ip`, wired to the DHT nodes `nodes`.
fn start_lt_torrent(name: &str, ip: &str, nodes: &[String]) -> Proc {
    let py = libtorrent_python();
    let mut a = args(&[SCRIPT_TORRENT, "--ip", ip]);
    for n in nodes {
        a.push("--add-node".into());
        a.push(n.clone());
    }
    let proc = Proc::spawn(name, py, &a);
    let ready = json(&proc.wait_line(Duration::from_secs(30), "ready", |l| l.contains("ready")));
    assert_eq!(ready["ready"], true, "lt_torrent.py failed: {ready}");
    proc
}

// ----- dhtnode processes ------------------------------------------------------------------

// ----- libtorrent seeds, dhtnode fetches --------------------------------------------------

/// A libtorrent session seeds `src` (trackerless, v1) into a private libtorrent DHT;
/// `dhtnode fetch <infohash>`, bootstrapped from one libtorrent node, downloads it.
fn libtorrent_seeds_dhtnode_fetches(net: u8, make: fn(&Path, u64) -> PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = make(&tmp.path().join("src"), u64::from(net));
    let (_dht, nodes) = start_lt_dht(net, 6);
    let mut seeder = start_lt_torrent("lt_seed", &format!("127.{net}.0.100"), &nodes);
    let started = Instant::now();
    let s = common::lt::call(
        &mut seeder,
        serde_json::json!({"cmd": "seed", "path": src, "wait_announced": true, "timeout": 60}),
        Duration::from_secs(90),
    );
    eprintln!("libtorrent seeds: {s} ({:?})", started.elapsed());
    let ih = s["info_hash"].as_str().unwrap().to_string();

    let out = tmp.path().join("out");
    let started = Instant::now();
    let (code, stdout, stderr) = run_dhtnode(
        &args(&[
            "fetch",
            &ih,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.201:0"),
            "--bootstrap",
            &nodes[3],
            "--json",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(
        code,
        0,
        "dhtnode fetch from libtorrent failed after {:?}\nstdout: {stdout}\nstderr: {stderr}",
        started.elapsed()
    );
    let r = json(stdout.lines().last().expect("JSON report"));
    eprintln!("dhtnode fetch: {r}");
    assert_eq!(r["infohash"].as_str(), Some(ih.as_str()), "{r}");
    assert_eq!(r["name"], s["name"], "{r}");
    assert_eq!(r["bytes"], s["bytes"], "{r}");
    assert_eq!(r["pieces"], s["pieces"], "{r}");
    assert!(
        r["metadata_ms"].as_u64().is_some(),
        "metadata not fetched: {r}"
    );
    assert!(r["peers_connected"].as_u64().unwrap_or(0) >= 1, "{r}");
    let name = s["name"].as_str().unwrap();
    assert_same(&src, &out.join(name));
}

#[test]
fn libtorrent_seeds_single_file_dhtnode_fetches_by_infohash() {
    libtorrent_seeds_dhtnode_fetches(96, make_single);
}

#[test]
fn libtorrent_seeds_directory_dhtnode_fetches_by_infohash() {
    libtorrent_seeds_dhtnode_fetches(97, make_tree);
}

// ----- dhtnode seeds, libtorrent downloads ------------------------------------------------

/// `dhtnode seed` announces `src` into a DHT of `dhtnode bootstrap` nodes; a libtorrent
/// session wired to those nodes downloads it knowing only the info-hash.
fn dhtnode_seeds_libtorrent_fetches(net: u8, make: fn(&Path, u64) -> PathBuf) {
    libtorrent_python();
    let tmp = tempfile::tempdir().unwrap();
    let src = make(&tmp.path().join("src"), u64::from(net));
    let dht = start_dht_network(net, 6, &tmp.path().join("dht"), &[]);
    let seed_addr = format!("127.{net}.0.200:7000");
    let seed = Proc::dhtnode(
        "seed",
        &args(&[
            "seed",
            src.to_str().unwrap(),
            "--bind",
            &seed_addr,
            "--bootstrap",
            &node_addr(net, 0),
            "--json",
        ]),
    );
    let info = json(
        &seed
            .next_line(Duration::from_secs(60))
            .expect("seed printed no JSON line within 60 s"),
    );
    let ih = info["infohash"].as_str().unwrap().to_string();
    wait_announced(net, &ih, &node_addr(net, 4), &seed_addr);

    let nodes: Vec<String> = (0..6).map(|i| node_addr(net, i)).collect();
    let mut leecher = start_lt_torrent("lt_download", &format!("127.{net}.0.100"), &nodes);
    let save = tmp.path().join("lt-save");
    let started = Instant::now();
    let r = common::lt::call(
        &mut leecher,
        serde_json::json!({"cmd": "download", "info_hash": ih, "save_path": save, "timeout": 90}),
        Duration::from_secs(120),
    );
    eprintln!("libtorrent download: {r} ({:?})", started.elapsed());
    assert_eq!(r["finished"], true, "{r}");
    assert_eq!(r["name"], info["name"], "{r} vs {info}");
    assert_eq!(r["bytes"], info["bytes"], "{r} vs {info}");
    assert_eq!(r["pieces"], info["pieces"], "{r} vs {info}");
    let name = info["name"].as_str().unwrap();
    assert_same(&src, &save.join(name));
    drop(leecher);
    drop(seed);
    drop(dht);
}

#[test]
fn dhtnode_seeds_single_file_libtorrent_downloads_by_infohash() {
    dhtnode_seeds_libtorrent_fetches(98, make_single);
}

#[test]
fn dhtnode_seeds_directory_libtorrent_downloads_by_infohash() {
    dhtnode_seeds_libtorrent_fetches(99, make_tree);
}
