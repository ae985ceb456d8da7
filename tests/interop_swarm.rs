//! `dhtnode fetch --seed` in one swarm with real libtorrent 2.0 peers (Debian's
//! python3-libtorrent, driven by tests/interop/lt_torrent.py): a libtorrent seeder capped at
//! 1 MB/s shares 14 MiB; one `dhtnode fetch --seed` and one libtorrent downloader start
//! together from the info-hash and a DHT of `dhtnode bootstrap` nodes (the libtorrent sessions
//! join it with `add_dht_node`). Both downloaders must trade pieces with each other while both
//! are still downloading, which the capped seeder makes worthwhile.
//!
//! Uses 127.112.0.0/16. Without libtorrent the test fails and says what to install.

mod common;

use std::time::{Duration, Instant};

use common::files::{assert_same_file, write_random};
use common::lt::{start_session, traffic_with};
use common::{fetch_args, node_addr, start_dht_network, Proc, SpawnOpts};
use serde_json::json;

/// One swarm: libtorrent seeder (1 MB/s cap) + `dhtnode fetch --seed` + libtorrent downloader.
/// Polls the libtorrent downloader's `peers` (payload bytes per peer, matched by the dhtnode's
/// --bind IP) a few times a second and asserts:
/// (i) the libtorrent downloader had received > 0 payload bytes from the dhtnode peer at a
///     moment when `dhtnode fetch` had not yet printed its completion line (the peers reply is
///     read before dhtnode's stdout is checked, so the order is certain);
/// (ii) libtorrent had uploaded > 0 payload bytes to the dhtnode peer while its own progress
///     was < 1 (both read from the same reply);
///
/// and that both copies end byte-identical to the source.
#[test]
fn dhtnode_and_libtorrent_trade_pieces_while_downloading() {
    let net = 112;
    const SIZE: usize = 14 * 1024 * 1024;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("swarm.bin");
    write_random(&src, SIZE, 112);
    let _dht = start_dht_network(net, 3, &tmp.path().join("dht"), &[]);
    let nodes: Vec<String> = (0..3).map(|i| node_addr(net, i)).collect();
    let opts = SpawnOpts::default();

    let mut seeder = start_session("lt_seed", &format!("127.{net}.0.100"), &nodes, &opts)
        .unwrap_or_else(|e| panic!("{e}"));
    let s = seeder.call_json(
        json!({"cmd": "seed", "path": src, "upload_limit": 1_000_000,
               "wait_announced": true, "timeout": 60}),
        Duration::from_secs(90),
    );
    let ih = s["info_hash"].as_str().unwrap().to_string();
    eprintln!("libtorrent seeds {ih}: {s}");
    let mut leecher = start_session("lt_download", &format!("127.{net}.0.150"), &nodes, &opts)
        .unwrap_or_else(|e| panic!("{e}"));

    let dht_ip = format!("127.{net}.0.201");
    let out = tmp.path().join("out");
    let save = tmp.path().join("lt-save");
    let started = Instant::now();
    let fetch = Proc::dhtnode(
        "fetch",
        &fetch_args(&ih, &out, &format!("{dht_ip}:0"), &nodes[1], &["--seed"]),
    );
    leecher.call_json(
        json!({"cmd": "download", "info_hash": ih, "save_path": save, "background": true,
               "timeout": 90}),
        Duration::from_secs(10),
    );

    let deadline = started + Duration::from_secs(90);
    let mut fetch_done: Option<serde_json::Value> = None;
    let mut lt_done = false;
    // (bytes libtorrent had received from dhtnode, seconds) while dhtnode was downloading.
    let mut from_dhtnode: Option<(u64, f64)> = None;
    // (bytes libtorrent had sent to dhtnode, libtorrent's progress, seconds).
    let mut to_dhtnode: Option<(u64, f64, f64)> = None;
    let mut last = json!(null);
    while Instant::now() < deadline && !(lt_done && fetch_done.is_some()) {
        let r = leecher.call_json(
            json!({"cmd": "peers", "info_hash": ih}),
            Duration::from_secs(10),
        );
        let (down, up) = traffic_with(&r, &dht_ip);
        let progress = r["progress"].as_f64().unwrap_or(0.0);
        lt_done = lt_done || r["finished"] == true;
        // Only now look at dhtnode's stdout: a completion line not there yet was not printed
        // before the peers reply above was made.
        if fetch_done.is_none() {
            fetch_done = fetch.wait_json(Duration::from_millis(5), |v| v.get("infohash").is_some());
            if let Some(v) = &fetch_done {
                eprintln!(
                    "dhtnode fetch done after {:.1} s: {v}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        let t = started.elapsed().as_secs_f64();
        if down > 0 && from_dhtnode.is_none() && fetch_done.is_none() {
            from_dhtnode = Some((down, t));
        }
        if up > 0 && progress < 1.0 && to_dhtnode.is_none() {
            to_dhtnode = Some((up, progress, t));
        }
        last = r;
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "libtorrent downloader's last peers reply: {last}\nfrom dhtnode while it downloaded: \
         {from_dhtnode:?}; to dhtnode while libtorrent downloaded: {to_dhtnode:?}"
    );
    let r = fetch_done
        .unwrap_or_else(|| panic!("dhtnode fetch printed no completion line within 90 s"));
    assert!(
        lt_done,
        "the libtorrent downloader did not finish within 90 s: {last}"
    );
    assert_eq!(r["infohash"].as_str(), Some(ih.as_str()), "{r}");
    assert_same_file(&src, &out.join("swarm.bin"));
    assert_same_file(&src, &save.join("swarm.bin"));
    assert!(
        from_dhtnode.is_some(),
        "(i) libtorrent never received payload from the dhtnode peer {dht_ip} while dhtnode \
         was still downloading"
    );
    assert!(
        to_dhtnode.is_some(),
        "(ii) libtorrent never uploaded payload to the dhtnode peer {dht_ip} while it was \
         still downloading itself"
    );
}
