//! `dhtnode fetch` as a swarm member, end to end through the binary (dhtnode only):
//! - flash crowd: one rate-capped `dhtnode seed` and six `dhtnode fetch <infohash> --seed`
//!   started together over a small loopback DHT must trade pieces among themselves, so every
//!   downloader uploads and the seed sends the file out at most twice;
//! - PEX with the DHT off: C knows only peer A, and must learn further peers from A's PEX
//!   messages (BEP 11) and download from them.
//!
//! Each test owns one 127.N.0.0/16 range (N = 110, 111); every wait is bounded and every
//! child is killed when the test ends, also on panic.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::files::{assert_same_file, write_random};
use common::{
    fetch_args, node_addr, start_dht_network, start_seed, wait_announced, wait_stopped, Proc,
};

const MIB: usize = 1024 * 1024;

/// Waits until `p` prints its completion line (the one with `infohash`), at most until
/// `deadline`, and checks it names the torrent `ih`.
fn wait_done(p: &Proc, ih: &str, deadline: Instant, started: Instant) -> serde_json::Value {
    let left = deadline.saturating_duration_since(Instant::now());
    let r = p
        .wait_json(left, |v| v.get("infohash").is_some())
        .unwrap_or_else(|| {
            panic!(
                "{}: no completion line {:.1} s after the start",
                p.name,
                started.elapsed().as_secs_f64()
            )
        });
    assert_eq!(r["infohash"].as_str(), Some(ih), "{}: {r}", p.name);
    eprintln!(
        "{} done after {:.1} s: {r}",
        p.name,
        started.elapsed().as_secs_f64()
    );
    r
}

/// A field the new swarm contract adds to the JSON lines (absent from older binaries).
fn new_field(v: &serde_json::Value, field: &str, who: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{who}: no `{field}` in {v} (the swarm contract requires it)"))
}

/// Waits for a seeding process sent SIGTERM to exit 0 and returns the `uploaded_bytes` of its
/// `stopped` line.
fn stopped_uploaded(p: &mut Proc) -> u64 {
    let (st, stopped) = wait_stopped(p, Duration::from_secs(10));
    assert!(
        st.is_some_and(|s| s.success()),
        "{}: exit {st:?} within 10 s of SIGTERM, want 0",
        p.name
    );
    let stopped = stopped.unwrap_or_else(|| {
        panic!(
            "{}: no {{\"event\":\"stopped\",\"uploaded_bytes\":N}} line on SIGTERM",
            p.name
        )
    });
    new_field(&stopped, "uploaded_bytes", &p.name)
}

/// Flash crowd: a DHT of 4 `dhtnode bootstrap` nodes; one seed of 8 MiB capped at 2 MB/s;
/// six `fetch --seed` from the info-hash, each on its own 127.110.1.x and one bootstrap node,
/// all started at once. Asserts: every download completes byte-identical; every downloader
/// uploaded payload to others (`uploaded_bytes` of its `stopped` line > 0); the seed's
/// `uploaded_bytes` on stop is at most twice the file size (the others served the rest).
#[test]
fn flash_crowd_downloaders_upload_to_each_other() {
    let net = 110;
    const FETCHERS: usize = 6;
    const SIZE: usize = 8 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("flash.bin");
    write_random(&src, SIZE, 110);
    let _dht = start_dht_network(net, 4, &tmp.path().join("dht"), &[]);
    let seed_addr = format!("127.{net}.0.200:7000");
    let (mut seed, info) = start_seed(
        &src,
        &seed_addr,
        &node_addr(net, 0),
        &["--upload-limit", "2000000"],
    );
    let ih = info["infohash"].as_str().unwrap().to_string();
    wait_announced(net, &ih, &node_addr(net, 3), &seed_addr);

    let started = Instant::now();
    let outs: Vec<PathBuf> = (0..FETCHERS)
        .map(|i| tmp.path().join(format!("out{i}")))
        .collect();
    let mut fetchers: Vec<Proc> = (0..FETCHERS)
        .map(|i| {
            Proc::dhtnode(
                &format!("fetch{i}"),
                &fetch_args(
                    &ih,
                    &outs[i],
                    &format!("127.{net}.1.{}:0", i + 1),
                    &node_addr(net, i % 4),
                    &["--seed"],
                ),
            )
        })
        .collect();
    // The seed alone would need 6 x 4.2 s; a swarm finishes in about a third of that.
    let deadline = started + Duration::from_secs(40);
    let done: Vec<serde_json::Value> = fetchers
        .iter()
        .map(|p| wait_done(p, &ih, deadline, started))
        .collect();
    for out in &outs {
        assert_same_file(&src, &out.join("flash.bin"));
    }

    seed.signal(libc::SIGTERM);
    for p in &fetchers {
        p.signal(libc::SIGTERM);
    }
    let seed_up = stopped_uploaded(&mut seed);
    let mut uploaded = Vec::new();
    for (p, r) in fetchers.iter_mut().zip(&done) {
        let at_done = r["uploaded_bytes"].as_u64();
        let total = stopped_uploaded(p);
        eprintln!(
            "{}: uploaded {at_done:?} at completion, {total} in all",
            p.name
        );
        uploaded.push(total);
    }
    eprintln!(
        "seed uploaded {seed_up} bytes ({:.2} x the file)",
        seed_up as f64 / SIZE as f64
    );
    for (i, up) in uploaded.iter().enumerate() {
        assert!(*up > 0, "fetch{i} uploaded nothing: {uploaded:?}");
    }
    assert!(
        seed_up <= 2 * SIZE as u64,
        "the seed uploaded {seed_up} bytes, more than 2 x {SIZE}: the downloaders did not share \
         (their uploads: {uploaded:?})"
    );
}

/// PEX with the DHT off (`--bootstrap none` everywhere): seed S (capped at 1 MB/s, 6 MiB); A and
/// B fetch with `--peer S --seed`; a second later C fetches with only `--peer A`. Asserts: C's
/// `peers_from_pex` >= 1 (A told it about S or B), C's `peers_connected` >= 2, and all three
/// copies are byte-identical.
#[test]
fn pex_finds_peers_without_the_dht() {
    let net = 111;
    const SIZE: usize = 6 * MIB;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("pex.bin");
    write_random(&src, SIZE, 111);
    let s_addr = format!("127.{net}.0.200:7000");
    let (_seed, info) = start_seed(&src, &s_addr, "none", &["--upload-limit", "1000000"]);
    let ih = info["infohash"].as_str().unwrap().to_string();

    let started = Instant::now();
    let a_addr = format!("127.{net}.1.1:7001");
    let fetch = |name: &str, bind: &str, peer: &str| {
        let out = tmp.path().join(name);
        let p = Proc::dhtnode(
            name,
            &fetch_args(&ih, &out, bind, "none", &["--peer", peer, "--seed"]),
        );
        (p, out)
    };
    let (a, a_out) = fetch("a", &a_addr, &s_addr);
    let (b, b_out) = fetch("b", &format!("127.{net}.1.2:7002"), &s_addr);
    // C starts while A and B are still downloading from S, so A has peers to tell about.
    std::thread::sleep(Duration::from_secs(1));
    let (c, c_out) = fetch("c", &format!("127.{net}.1.3:7003"), &a_addr);

    let deadline = started + Duration::from_secs(30);
    let rc = wait_done(&c, &ih, deadline, started);
    for (p, _) in [(&a, &a_out), (&b, &b_out)] {
        wait_done(p, &ih, deadline, started);
    }
    for out in [&a_out, &b_out, &c_out] {
        assert_same_file(&src, &out.join("pex.bin"));
    }
    let pex = new_field(&rc, "peers_from_pex", "c");
    assert!(pex >= 1, "C learnt no peer through PEX: {rc}");
    let connected = rc["peers_connected"].as_u64().unwrap_or(0);
    assert!(
        connected >= 2,
        "C connected to {connected} peer(s), want A plus one learnt via PEX: {rc}"
    );
}
