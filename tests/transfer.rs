//! End to end through the binary, `dhtnode` processes only: a small DHT of `dhtnode bootstrap`
//! nodes on 127.9x.0.y, a `dhtnode seed` announcing into it, and `dhtnode fetch` finding the
//! seeder by info-hash (or magnet link, or .torrent file, or `--peer` alone) and downloading
//! bytes identical to the source; a download killed with `kill -9` resumes without fetching
//! its verified pieces again; hostile torrents and bad arguments fail cleanly.
//!
//! Each test owns one 127.N.0.0/16 range (N = 90..=96) so the tests run in parallel.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::files::{assert_same_file, assert_same_tree, files_under, write_random};
use common::{args, json, node_addr, run_dhtnode, start_dht_network, wait_announced, Proc};

/// Upper bound for one `dhtnode fetch` run in these tests.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

// ----- data -------------------------------------------------------------------------------

/// The entries of `out` except dhtnode's hidden resume records (`.NAME.dhtnode-resume`).
fn visible_entries(out: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".dhtnode-resume"))
        .collect();
    v.sort();
    v
}

// ----- processes --------------------------------------------------------------------------

struct Seed {
    proc: Proc,
    /// The first stdout line: infohash, magnet, name, bytes, pieces.
    info: serde_json::Value,
    /// Where it serves peers (TCP) and runs its DHT node (UDP).
    addr: String,
}

impl Seed {
    fn infohash(&self) -> String {
        self.info["infohash"].as_str().unwrap().to_string()
    }

    /// SIGTERM: the seeder stops serving and exits 0.
    fn stop(mut self) {
        self.proc.signal(libc::SIGTERM);
        let st = self.proc.wait_exit(Duration::from_secs(10));
        assert!(st.success(), "seed exited with {st} on SIGTERM");
    }
}

/// `dhtnode seed PATH --bind ADDR --bootstrap BOOT --json [extra...]`; waits for the JSON line.
fn start_seed(addr: &str, path: &Path, boot: &str, extra: &[&str]) -> Seed {
    let mut a = args(&[
        "seed",
        path.to_str().unwrap(),
        "--bind",
        addr,
        "--bootstrap",
        boot,
        "--json",
    ]);
    a.extend(args(extra));
    let proc = Proc::dhtnode("seed", &a);
    let line = proc
        .next_line(Duration::from_secs(60))
        .expect("seed printed no JSON line within 60 s");
    let info = json(&line);
    for key in ["infohash", "magnet", "name", "bytes", "pieces"] {
        assert!(info.get(key).is_some(), "seed JSON lacks {key}: {info}");
    }
    assert_eq!(info["infohash"].as_str().unwrap().len(), 40, "{info}");
    Seed {
        proc,
        info,
        addr: addr.to_string(),
    }
}

/// Runs `dhtnode fetch ...` to completion (bounded); returns (exit code, stdout, stderr).
fn fetch(a: &[&str]) -> (i32, String, String) {
    let mut full = vec!["fetch"];
    full.extend_from_slice(a);
    run_dhtnode(&args(&full), FETCH_TIMEOUT)
}

/// Runs a fetch that must succeed and returns its JSON report (checked against the seed's).
fn fetch_ok(a: &[&str], seed: &Seed) -> serde_json::Value {
    let started = Instant::now();
    let (code, out, err) = fetch(a);
    assert_eq!(
        code,
        0,
        "fetch {a:?} failed after {:?}\nstdout: {out}\nstderr: {err}",
        started.elapsed()
    );
    let last = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no JSON: {err}"));
    let r = json(last);
    for key in ["infohash", "name", "bytes", "pieces"] {
        assert_eq!(
            r[key], seed.info[key],
            "{key} differs: fetch {r} seed {}",
            seed.info
        );
    }
    for key in [
        "elapsed_ms",
        "first_peer_ms",
        "metadata_ms",
        "peers_connected",
        "download_mb_s",
    ] {
        assert!(r.get(key).is_some(), "fetch JSON lacks {key}: {r}");
    }
    assert!(r["peers_connected"].as_u64().unwrap() >= 1, "{r}");
    eprintln!("fetch {}: {r}", a[0]);
    r
}

// ----- tests: seed then fetch -------------------------------------------------------------

#[test]
fn single_file_seed_then_fetch_by_infohash_through_the_dht() {
    let net = 90;
    let tmp = tempfile::tempdir().unwrap();
    let dht = start_dht_network(net, 8, &tmp.path().join("dht"), &[]);
    // A few MiB, not a multiple of any piece size.
    let src = tmp.path().join("src").join("random.bin");
    write_random(&src, 3 * 1024 * 1024 + 12_345, 90);
    let seed = start_seed(
        &format!("127.{net}.0.200:7000"),
        &src,
        &node_addr(net, 0),
        &[],
    );
    assert_eq!(seed.info["name"], "random.bin");
    assert_eq!(seed.info["bytes"], 3 * 1024 * 1024 + 12_345);
    let ih = seed.infohash();
    wait_announced(net, &ih, &node_addr(net, 5), &seed.addr);

    let out = tmp.path().join("out");
    let r = fetch_ok(
        &[
            &ih,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.201:0"),
            "--bootstrap",
            &node_addr(net, 6),
            "--json",
        ],
        &seed,
    );
    assert!(
        r["metadata_ms"].as_u64().is_some(),
        "metadata via BEP 9: {r}"
    );
    assert_eq!(r["pieces_resumed"], 0, "{r}");
    assert_eq!(visible_entries(&out), vec!["random.bin"]);
    assert_same_file(&src, &out.join("random.bin"));
    seed.stop();
    drop(dht);
}

#[test]
fn multi_file_directory_seed_then_fetch_by_infohash_through_the_dht() {
    let net = 91;
    let tmp = tempfile::tempdir().unwrap();
    let dht = start_dht_network(net, 8, &tmp.path().join("dht"), &[]);
    // Nested files, an empty file, sizes that do not line up with piece boundaries (so
    // pieces span file boundaries).
    let src = tmp.path().join("src").join("album");
    write_random(&src.join("a.bin"), 1024 * 1024 + 7, 1);
    write_random(&src.join("sub").join("b.bin"), 2 * 1024 * 1024 + 333, 2);
    write_random(&src.join("sub").join("deeper").join("c.txt"), 5_000, 3);
    write_random(&src.join("sub").join("d.bin"), 70_001, 4);
    std::fs::write(src.join("empty.txt"), b"").unwrap();
    write_random(&src.join("z.bin"), 1, 5);
    let total: u64 = files_under(&src)
        .iter()
        .map(|f| std::fs::metadata(src.join(f)).unwrap().len())
        .sum();

    let seed = start_seed(
        &format!("127.{net}.0.200:7000"),
        &src,
        &node_addr(net, 1),
        &[],
    );
    assert_eq!(seed.info["name"], "album");
    assert_eq!(seed.info["bytes"], total);
    let ih = seed.infohash();
    wait_announced(net, &ih, &node_addr(net, 4), &seed.addr);

    let out = tmp.path().join("out");
    fetch_ok(
        &[
            &ih,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.201:0"),
            "--bootstrap",
            &node_addr(net, 7),
            "--json",
        ],
        &seed,
    );
    assert_eq!(visible_entries(&out), vec!["album"]);
    // Every file, the empty one included, with the same bytes, and nothing else.
    assert_same_tree(&src, &out.join("album"));
    drop(seed);
    drop(dht);
}

/// Names real source trees have: the Linux kernel's `drivers/.../i2c/aux.c`, and `con.h`,
/// `nul.txt` (Windows device names, ordinary on Linux), unicode and spaces. Seeded and fetched
/// byte-identical, under the same names.
#[test]
fn a_tree_with_windows_device_names_unicode_and_spaces_seeds_and_fetches() {
    let net = 96;
    let tmp = tempfile::tempdir().unwrap();
    let dht = start_dht_network(net, 6, &tmp.path().join("dht"), &[]);
    let src = tmp.path().join("src").join("linux tree");
    let i2c = src.join("drivers").join("gpu").join("i2c");
    write_random(&i2c.join("aux.c"), 40_000, 11);
    write_random(&i2c.join("con.h"), 3_000, 12);
    write_random(&src.join("nul.txt"), 20_001, 13);
    write_random(&src.join("AUX"), 100, 14);
    write_random(
        &src.join("é 漢字 dir").join("file with  spaces .txt"),
        70_000,
        15,
    );
    write_random(&src.join("COM1.tar.gz"), 9, 16);
    let seed = start_seed(
        &format!("127.{net}.0.200:7000"),
        &src,
        &node_addr(net, 0),
        &[],
    );
    assert_eq!(seed.info["name"], "linux tree");
    let ih = seed.infohash();
    wait_announced(net, &ih, &node_addr(net, 3), &seed.addr);
    let out = tmp.path().join("out");
    fetch_ok(
        &[
            &ih,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.201:0"),
            "--bootstrap",
            &node_addr(net, 5),
            "--json",
        ],
        &seed,
    );
    assert_eq!(visible_entries(&out), vec!["linux tree"]);
    assert_same_tree(&src, &out.join("linux tree"));
    seed.stop();
    drop(dht);
}

#[test]
fn fetch_by_magnet_by_torrent_file_and_by_direct_peer_without_dht() {
    let net = 92;
    let tmp = tempfile::tempdir().unwrap();
    let dht = start_dht_network(net, 8, &tmp.path().join("dht"), &[]);
    let src = tmp.path().join("src").join("shared.dat");
    write_random(&src, 2 * 1024 * 1024 + 4_321, 92);
    let torrent = tmp.path().join("shared.torrent");
    let seed = start_seed(
        &format!("127.{net}.0.200:7000"),
        &src,
        &node_addr(net, 2),
        &["--torrent-out", torrent.to_str().unwrap()],
    );
    assert!(
        std::fs::metadata(&torrent).is_ok_and(|m| m.len() > 0),
        "--torrent-out wrote nothing before the JSON line"
    );
    let ih = seed.infohash();
    let magnet = seed.info["magnet"].as_str().unwrap().to_string();
    assert!(
        magnet.starts_with("magnet:?xt=urn:btih:") && magnet.to_lowercase().contains(&ih),
        "{magnet}"
    );
    wait_announced(net, &ih, &node_addr(net, 3), &seed.addr);

    // 1. Magnet link, peers through the DHT.
    let out = tmp.path().join("out-magnet");
    fetch_ok(
        &[
            &magnet,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.201:0"),
            "--bootstrap",
            &node_addr(net, 6),
            "--json",
        ],
        &seed,
    );
    assert_same_file(&src, &out.join("shared.dat"));

    // 2. The .torrent written by `seed --torrent-out`, peers through the DHT.
    let out = tmp.path().join("out-torrent");
    fetch_ok(
        &[
            torrent.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.202:0"),
            "--bootstrap",
            &node_addr(net, 7),
            "--json",
        ],
        &seed,
    );
    assert_same_file(&src, &out.join("shared.dat"));

    // 3. No DHT at all: `--bootstrap none` and the seeder given with `--peer`.
    let out = tmp.path().join("out-peer");
    let r = fetch_ok(
        &[
            &ih,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.203:0"),
            "--bootstrap",
            "none",
            "--peer",
            &seed.addr,
            "--json",
        ],
        &seed,
    );
    assert!(r["metadata_ms"].as_u64().is_some(), "{r}");
    assert_same_file(&src, &out.join("shared.dat"));
    drop(seed);
    drop(dht);
}

// ----- kill -9 and resume -----------------------------------------------------------------

/// A TCP relay between `dhtnode fetch` and the seeder that limits the seeder→fetch rate (so a
/// loopback download lasts long enough to be killed halfway) and counts the bytes it forwards
/// in that direction (so a resumed download can be shown not to fetch verified pieces again).
struct Relay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    /// Bytes forwarded seeder → fetch since the last `take_down_bytes`.
    down: Arc<AtomicU64>,
    /// Rate limit seeder → fetch for new connections, bytes/s; 0 = unlimited.
    rate: Arc<AtomicU64>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(bind: &str, target: SocketAddr, rate: u64) -> Relay {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let down = Arc::new(AtomicU64::new(0));
        let rate = Arc::new(AtomicU64::new(rate));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let accept = {
            let (stop, down, rate, streams) =
                (stop.clone(), down.clone(), rate.clone(), streams.clone());
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = client else { continue };
                    let Ok(upstream) = TcpStream::connect(target) else {
                        continue;
                    };
                    {
                        let mut s = streams.lock().unwrap();
                        s.push(client.try_clone().unwrap());
                        s.push(upstream.try_clone().unwrap());
                    }
                    let limit = rate.load(Ordering::SeqCst);
                    let (c2, u2) = (client.try_clone().unwrap(), upstream.try_clone().unwrap());
                    std::thread::spawn(move || pipe(client, upstream, 0, None));
                    let down = down.clone();
                    std::thread::spawn(move || pipe(u2, c2, limit, Some(down)));
                }
            })
        };
        Relay {
            addr,
            stop,
            down,
            rate,
            streams,
            accept: Some(accept),
        }
    }

    fn take_down_bytes(&self) -> u64 {
        self.down.swap(0, Ordering::SeqCst)
    }

    fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::SeqCst);
    }
}

/// Copies `from` → `to` until either side closes, at most `rate` bytes/s (0: unlimited).
fn pipe(mut from: TcpStream, mut to: TcpStream, rate: u64, count: Option<Arc<AtomicU64>>) {
    let started = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        sent += n as u64;
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if rate > 0 {
            // Rate limiting (not synchronisation): stay on the line `sent / rate`.
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        for s in self.streams.lock().unwrap().iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn kill_9_mid_download_then_fetch_again_resumes_without_refetching_verified_pieces() {
    let net = 93;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("large.bin");
    let size = 96 * 1024 * 1024 + 777;
    write_random(&src, size, 93);
    let seed = start_seed(&format!("127.{net}.0.200:7000"), &src, "none", &[]);
    let ih = seed.infohash();
    let pieces = seed.info["pieces"].as_u64().unwrap();
    let piece_len = (size as u64).div_ceil(pieces).next_power_of_two();

    // Loopback moves 96 MiB in well under a second; through the relay at 8 MiB/s it takes
    // ~12 s, and dhtnode makes verified pieces durable every few seconds.
    let relay = Relay::start(
        &format!("127.{net}.0.202:0"),
        seed.addr.parse().unwrap(),
        8 * 1024 * 1024,
    );
    let out = tmp.path().join("out");
    let relay_addr = relay.addr.to_string();
    let fetch_args = |bind: &str| {
        args(&[
            "fetch",
            &ih,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            bind,
            "--bootstrap",
            "none",
            "--peer",
            &relay_addr,
            "--json",
        ])
    };
    let mut first = Proc::dhtnode("fetch-1", &fetch_args(&format!("127.{net}.0.201:0")));
    // Kill once the resume record exists: some pieces are recorded as verified.
    let has_record = || {
        std::fs::read_dir(&out).is_ok_and(|rd| {
            rd.filter_map(Result::ok).any(|e| {
                e.file_name().to_string_lossy().ends_with(".dhtnode-resume")
                    && e.metadata().is_ok_and(|m| m.len() > 0)
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !has_record() {
        assert!(
            Instant::now() < deadline,
            "no resume record in {} within 60 s",
            out.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    first.signal(libc::SIGKILL);
    let status = first.wait_exit(Duration::from_secs(10));
    assert_eq!(
        status.code(),
        None,
        "fetch-1 had already exited ({status}) before kill -9: the download was too fast to \
         interrupt; stdout {:?}",
        first.rest()
    );
    let before_kill = relay.take_down_bytes();
    assert!(
        before_kill < size as u64,
        "relay forwarded {before_kill} bytes"
    );

    // Again, unthrottled, through the relay so the bytes fetched are counted.
    relay.set_rate(0);
    let started = Instant::now();
    let (code, stdout, stderr) =
        run_dhtnode(&fetch_args(&format!("127.{net}.0.203:0")), FETCH_TIMEOUT);
    assert_eq!(
        code,
        0,
        "second fetch failed after {:?}\nstdout: {stdout}\nstderr: {stderr}",
        started.elapsed()
    );
    let r = json(stdout.lines().last().expect("JSON report"));
    assert_eq!(r["pieces"].as_u64(), Some(pieces), "{r}");
    let resumed = r["pieces_resumed"].as_u64().expect("pieces_resumed");
    assert!(resumed > 0, "no piece resumed after kill -9: {r}");
    assert!(
        resumed < pieces,
        "all pieces resumed: the first run was not interrupted: {r}"
    );
    // Bytes right: resumed pieces are not re-checked by the network, so any piece recorded
    // as verified with wrong bytes on disk would show here.
    assert_same_file(&src, &out.join("large.bin"));
    // Verified pieces were not fetched again: what came through the relay covers only the
    // missing pieces (plus metadata and message framing).
    let fetched = relay.take_down_bytes();
    eprintln!(
        "resumed fetch: {r}; the relay forwarded {before_kill} bytes before kill -9 and \
         {fetched} bytes after"
    );
    let missing = (pieces - resumed + 1) * piece_len;
    assert!(
        fetched <= missing + missing / 50 + 256 * 1024,
        "second fetch downloaded {fetched} bytes; only {} of {pieces} pieces ({missing} bytes at most) were missing",
        pieces - resumed
    );
    drop(relay);
    drop(seed);
}

// ----- hostile input ----------------------------------------------------------------------

/// Minimal bencode writer for hand-made torrents.
enum B<'a> {
    I(i64),
    S(&'a [u8]),
    L(Vec<B<'a>>),
    D(Vec<(&'a str, B<'a>)>),
}

fn bencode(v: &B, out: &mut Vec<u8>) {
    match v {
        B::I(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
        B::S(s) => {
            out.extend_from_slice(format!("{}:", s.len()).as_bytes());
            out.extend_from_slice(s);
        }
        B::L(l) => {
            out.push(b'l');
            l.iter().for_each(|x| bencode(x, out));
            out.push(b'e');
        }
        B::D(d) => {
            out.push(b'd');
            let mut d: Vec<_> = d.iter().collect();
            d.sort_by_key(|(k, _)| *k);
            for (k, x) in d {
                bencode(&B::S(k.as_bytes()), out);
                bencode(x, out);
            }
            out.push(b'e');
        }
    }
}

/// A trackerless torrent whose info dict is `info`.
fn torrent_bytes(info: B) -> Vec<u8> {
    let mut out = Vec::new();
    bencode(&B::D(vec![("info", info)]), &mut out);
    out
}

/// Runs `fetch FILE.torrent` against output `root/out` with no way to reach anybody on the
/// network; returns (code, stderr). The peer address has nothing listening.
fn fetch_hostile(net: u8, torrent: &Path, out: &Path) -> (i32, String) {
    let (code, stdout, stderr) = fetch(&[
        torrent.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--bind",
        &format!("127.{net}.0.201:0"),
        "--bootstrap",
        "none",
        "--peer",
        &format!("127.{net}.0.250:9"),
        "--json",
    ]);
    assert!(
        !stderr.contains("panicked"),
        "dhtnode panicked on {}: {stderr}",
        torrent.display()
    );
    eprintln!(
        "fetch {}: exit {code}, stdout {stdout:?}, stderr {stderr:?}",
        torrent.display()
    );
    (code, stderr)
}

#[test]
fn hostile_torrents_are_refused_and_nothing_is_written_outside_the_output() {
    let net = 94;
    let tmp = tempfile::tempdir().unwrap();
    let torrents = tmp.path().join("torrents");
    std::fs::create_dir_all(&torrents).unwrap();
    // Names unique to this run, so a hit outside the output is ours.
    let evil = format!("evil-{}-{}", std::process::id(), net);
    let pieces = [0u8; 20];
    let dotdot_name = format!("../{evil}");
    let absolute = format!("{}/{evil}", tmp.path().display());

    let cases: Vec<(&str, Vec<u8>)> = vec![
        // Multi-file torrent with a `..` component.
        (
            "traversal-dotdot",
            torrent_bytes(B::D(vec![
                ("name", B::S(b"good")),
                ("piece length", B::I(16384)),
                ("pieces", B::S(&pieces)),
                (
                    "files",
                    B::L(vec![B::D(vec![
                        ("length", B::I(5)),
                        (
                            "path",
                            B::L(vec![B::S(b".."), B::S(b".."), B::S(evil.as_bytes())]),
                        ),
                    ])]),
                ),
            ])),
        ),
        // Single-file torrent whose name is `../evil`.
        (
            "traversal-name",
            torrent_bytes(B::D(vec![
                ("name", B::S(dotdot_name.as_bytes())),
                ("piece length", B::I(16384)),
                ("pieces", B::S(&pieces)),
                ("length", B::I(5)),
            ])),
        ),
        // Multi-file torrent with an absolute path component.
        (
            "traversal-absolute",
            torrent_bytes(B::D(vec![
                ("name", B::S(b"good")),
                ("piece length", B::I(16384)),
                ("pieces", B::S(&pieces)),
                (
                    "files",
                    B::L(vec![B::D(vec![
                        ("length", B::I(5)),
                        ("path", B::L(vec![B::S(absolute.as_bytes())])),
                    ])]),
                ),
            ])),
        ),
    ];
    for (name, bytes) in &cases {
        let file = torrents.join(format!("{name}.torrent"));
        std::fs::write(&file, bytes).unwrap();
        let root = tmp.path().join(format!("root-{name}"));
        let out = root.join("out");
        std::fs::create_dir_all(&out).unwrap();
        let (code, stderr) = fetch_hostile(net, &file, &out);
        assert_ne!(code, 0, "{name}: fetch accepted a path-traversal torrent");
        assert!(
            stderr.contains("error") && (stderr.contains("..") || stderr.contains("path")),
            "{name}: no clear message about the unsafe path: {stderr}"
        );
        // Nothing outside the output directory, and nothing in it either.
        let mut around: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        around.sort();
        assert_eq!(
            around,
            vec!["out"],
            "{name}: files appeared next to the output"
        );
        assert!(
            visible_entries(&out).is_empty(),
            "{name}: files were written for a refused torrent: {:?}",
            visible_entries(&out)
        );
        for dir in [tmp.path(), tmp.path().parent().unwrap(), Path::new("/")] {
            assert!(
                !dir.join(&evil).exists(),
                "{name}: wrote {}",
                dir.join(&evil).display()
            );
        }
    }

    // Malformed bencode: clear error, non-zero exit, nothing written.
    let good = torrent_bytes(B::D(vec![
        ("name", B::S(b"fine.bin")),
        ("piece length", B::I(16384)),
        ("pieces", B::S(&pieces)),
        ("length", B::I(5)),
    ]));
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"this is not bencode at all".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("no-info", b"d8:announce3:urle".to_vec()),
        (
            "bad-length",
            b"d4:infod6:lengthi-5e4:name1:x12:piece lengthi16384e6:pieces0:ee".to_vec(),
        ),
        ("huge-string", b"d4:infod4:name99999999999:xee".to_vec()),
        ("trailing", [good.clone(), b"junk".to_vec()].concat()),
    ];
    for (name, bytes) in &malformed {
        let file = torrents.join(format!("{name}.torrent"));
        std::fs::write(&file, bytes).unwrap();
        let out = tmp.path().join(format!("out-{name}"));
        let (code, stderr) = fetch_hostile(net, &file, &out);
        assert_ne!(code, 0, "{name}: fetch accepted a malformed torrent");
        assert!(
            stderr.contains("error") && stderr.contains(&format!("{name}.torrent")),
            "{name}: no clear message naming the file: {stderr}"
        );
        assert!(
            !out.exists() || visible_entries(&out).is_empty(),
            "{name}: files written for a malformed torrent"
        );
    }
}

#[test]
fn bad_arguments_exit_2_with_a_message() {
    let net = 94;
    let ih = "5a5f0e6e0d6a2c8e9b1d3f7a9c0b2d4e6f8a1c3e";
    let peer = format!("127.{net}.0.250:9");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().to_str().unwrap();
    let missing = tmp.path().join("does-not-exist");
    let cases: Vec<Vec<String>> = vec![
        args(&["fetch"]),
        args(&[
            "fetch",
            "not-a-hash",
            "--bootstrap",
            "none",
            "--peer",
            &peer,
        ]),
        args(&["fetch", "abcd", "--bootstrap", "none", "--peer", &peer]),
        args(&["fetch", ih, "--output", out, "--bootstrap", "none"]),
        args(&["fetch", ih, "--bind", "nonsense", "--bootstrap", "none"]),
        args(&["fetch", ih, "--bootstrap", "none", "--peer", "not-an-addr"]),
        args(&["fetch", ih, "--bootstrap", "none", "--frobnicate"]),
        args(&["seed"]),
        args(&["seed", missing.to_str().unwrap(), "--bootstrap", "none"]),
        args(&["seed", out, "--bind", "[::1]:0", "--bootstrap", "none"]),
    ];
    for a in cases {
        let (code, stdout, stderr) = run_dhtnode(&a, Duration::from_secs(20));
        assert_eq!(
            code, 2,
            "{a:?}: exit {code}\nstdout {stdout}\nstderr {stderr}"
        );
        assert!(!stderr.trim().is_empty(), "{a:?}: no message on stderr");
        assert!(!stderr.contains("panicked"), "{a:?}: {stderr}");
        assert!(stdout.trim().is_empty(), "{a:?}: stdout {stdout}");
    }
    // A wrong info-hash says what was expected.
    let (_, _, err) = run_dhtnode(
        &args(&[
            "fetch",
            "not-a-hash",
            "--bootstrap",
            "none",
            "--peer",
            &peer,
        ]),
        Duration::from_secs(20),
    );
    assert!(err.contains("40 hex"), "{err}");
}

/// What a fake peer saw from `dhtnode fetch`.
#[derive(Default, Debug)]
struct FakePeerLog {
    connections: usize,
    metadata_requests: usize,
}

/// One connection of a fake peer that announces `metadata_size` in its BEP 10 handshake and
/// then only listens, counting ut_metadata requests (extension message id 3 is ours).
fn fake_metadata_peer(mut s: TcpStream, metadata_size: u64, log: &Mutex<FakePeerLog>) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut hs = [0u8; 68];
    if s.read_exact(&mut hs).is_err() || &hs[..20] != b"\x13BitTorrent protocol" {
        return;
    }
    log.lock().unwrap().connections += 1;
    let mut reply = Vec::with_capacity(68);
    reply.extend_from_slice(b"\x13BitTorrent protocol");
    reply.extend_from_slice(&[0, 0, 0, 0, 0, 0x10, 0, 0]);
    reply.extend_from_slice(&hs[28..48]);
    reply.extend_from_slice(b"-XX0001-fakepeer1234");
    let ext = format!("d1:md11:ut_metadatai3ee13:metadata_sizei{metadata_size}ee");
    let mut msg = ((ext.len() + 2) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&[20, 0]);
    msg.extend_from_slice(ext.as_bytes());
    reply.extend_from_slice(&msg);
    if s.write_all(&reply).is_err() {
        return;
    }
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).is_err() {
            return;
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > 1 << 20 {
            return;
        }
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        if body.len() >= 2 && body[0] == 20 && body[1] == 3 {
            log.lock().unwrap().metadata_requests += 1;
        }
    }
}

/// A fake peer listening on `bind` whose connections run [`fake_metadata_peer`]; `stop`
/// ends it and returns what it saw.
struct FakeMetadataServer {
    addr: SocketAddr,
    log: Arc<Mutex<FakePeerLog>>,
    stop: Arc<AtomicBool>,
    accept: JoinHandle<()>,
}

impl FakeMetadataServer {
    fn start(bind: &str, metadata_size: u64) -> FakeMetadataServer {
        let listener = TcpListener::bind(bind).unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(FakePeerLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let accept = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                for c in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(c) = c else { continue };
                    let log = log.clone();
                    std::thread::spawn(move || fake_metadata_peer(c, metadata_size, &log));
                }
            })
        };
        FakeMetadataServer {
            addr,
            log,
            stop,
            accept,
        }
    }

    fn stop(self) -> FakePeerLog {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(self.addr);
        self.accept.join().unwrap();
        let log = self.log.lock().unwrap();
        FakePeerLog {
            connections: log.connections,
            metadata_requests: log.metadata_requests,
        }
    }
}

#[test]
fn peer_claiming_huge_metadata_size_is_refused_without_a_crash() {
    let net = 94;
    let tmp = tempfile::tempdir().unwrap();
    // 1 TiB of "metadata": far above any sane cap (dhtnode's default is 16 MiB).
    let fake = FakeMetadataServer::start(&format!("127.{net}.0.210:0"), 1 << 40);
    let addr = fake.addr;
    let out = tmp.path().join("out");
    let started = Instant::now();
    let (code, stdout, stderr) = fetch(&[
        "5a5f0e6e0d6a2c8e9b1d3f7a9c0b2d4e6f8a1c3e",
        "--output",
        out.to_str().unwrap(),
        "--bind",
        &format!("127.{net}.0.202:0"),
        "--bootstrap",
        "none",
        "--peer",
        &addr.to_string(),
        "--json",
    ]);
    let log = fake.stop();
    eprintln!(
        "huge metadata_size: exit {code} after {:?}, {log:?}, stderr {stderr:?}",
        started.elapsed()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(code, 0, "fetch succeeded from a lying peer: {stdout}");
    assert!(stderr.contains("error"), "no clear message: {stderr}");
    assert!(log.connections >= 1, "fetch never connected to the peer");
    assert_eq!(
        log.metadata_requests, 0,
        "fetch requested metadata pieces of a 1 TiB info dictionary"
    );
    assert!(
        !out.exists() || visible_entries(&out).is_empty(),
        "files written without metadata"
    );
}

/// Issue 5 item 6: `kill -9` of `fetch` at 20 random moments, restarting each time. After every
/// kill, every piece the resume record calls verified must hash right on disk; at the end the
/// file is byte-identical.
#[test]
fn twenty_random_kill_9s_never_record_a_wrong_piece_and_the_file_ends_identical() {
    use dhtnode::torrent::{Metainfo, OpenMode, ResumeFile, Storage};
    use rand::{Rng, SeedableRng};

    let net = 95;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("crash.bin");
    let size = 64 * 1024 * 1024 + 4321;
    write_random(&src, size, 95);
    let torrent = tmp.path().join("crash.torrent");
    let seed = start_seed(
        &format!("127.{net}.0.200:7000"),
        &src,
        "none",
        &["--torrent-out", torrent.to_str().unwrap()],
    );
    let ih = seed.infohash();
    let mi = Metainfo::read_file(&torrent).expect("seed wrote its torrent");
    // Slow enough (1.5 MiB/s) that kills land mid-download, in metadata, start-up checks,
    // writes and flushes. (A restart hashes the file the killed run was writing and keeps
    // every piece already there, so a kill loses little: the download must take ~20 kills'
    // worth of time, 2 s on average each.)
    let relay = Relay::start(
        &format!("127.{net}.0.202:0"),
        seed.addr.parse().unwrap(),
        3 * 512 * 1024,
    );
    let out = tmp.path().join("out");
    let relay_addr = relay.addr.to_string();
    let fetch_args = args(&[
        "fetch",
        &ih,
        "--output",
        out.to_str().unwrap(),
        "--bind",
        &format!("127.{net}.0.201:0"),
        "--bootstrap",
        "none",
        "--peer",
        &relay_addr,
        "--json",
    ]);
    let resume_path = ResumeFile::default_path(&out, &mi.info);
    let num_pieces = mi.info.num_pieces() as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(95);
    let mut checked_pieces = 0u64;
    let mut kills = 0;
    while kills < 20 {
        let mut p = Proc::dhtnode("fetch", &fetch_args);
        // A random moment: from right at start-up to well into the download.
        let wait = Duration::from_millis(rng.gen_range(0..4000));
        let deadline = Instant::now() + wait;
        let mut exited = None;
        while Instant::now() < deadline {
            if let Some(st) = p.try_exit() {
                exited = Some(st);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if exited.is_some() {
            // It finished before the kill: the download is complete; stop killing.
            break;
        }
        p.signal(libc::SIGKILL);
        let st = p.wait_exit(Duration::from_secs(10));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(libc::SIGKILL)
        );
        kills += 1;
        // The invariant: every piece recorded as verified is right on disk.
        let record = ResumeFile::load(&resume_path, mi.info_hash, num_pieces);
        let verified: Vec<u32> = record.verified().iter().collect();
        if !verified.is_empty() {
            let storage = Storage::open(&out, &mi.info, OpenMode::Existing)
                .expect("data files exist once pieces are recorded");
            for i in &verified {
                assert!(
                    storage.verify_piece(*i).unwrap().is_some(),
                    "after kill {kills}: piece {i} is recorded as verified but wrong on disk"
                );
            }
            checked_pieces += verified.len() as u64;
        }
    }
    // A last run completes; the bytes are the original's.
    let (code, stdout, stderr) = run_dhtnode(&fetch_args, FETCH_TIMEOUT);
    assert_eq!(code, 0, "final fetch failed: {stdout} {stderr}");
    assert_same_file(&src, &out.join("crash.bin"));
    eprintln!("{kills} kills, {checked_pieces} recorded pieces checked against the disk");
    assert!(
        kills >= 10,
        "the download finished too fast to kill it often ({kills} kills)"
    );
    drop(relay);
    seed.stop();
}

/// A peer that advertises metadata and then never sends it (nor anything else) is dropped
/// after a bounded time, and a fetch with no other peer fails with a clear message instead of
/// hanging.
#[test]
fn peer_that_never_answers_metadata_requests_is_dropped_and_fetch_ends() {
    let net = 94;
    let tmp = tempfile::tempdir().unwrap();
    let fake = FakeMetadataServer::start(&format!("127.{net}.0.211:0"), 1000);
    let addr = fake.addr;
    let out = tmp.path().join("out");
    let started = Instant::now();
    let (code, _stdout, stderr) = fetch(&[
        "5a5f0e6e0d6a2c8e9b1d3f7a9c0b2d4e6f8a1c3e",
        "--output",
        out.to_str().unwrap(),
        "--bind",
        &format!("127.{net}.0.203:0"),
        "--bootstrap",
        "none",
        "--peer",
        &addr.to_string(),
        "--json",
    ]);
    let took = started.elapsed();
    let log = fake.stop();
    eprintln!("silent peer: exit {code} after {took:?}, {log:?}");
    assert_ne!(code, 0);
    assert!(stderr.contains("ran out of peers"), "{stderr}");
    assert!(log.metadata_requests >= 1, "metadata was never requested");
    assert!(took < Duration::from_secs(100), "took {took:?}");
}

/// Issue 5 item 5: slow-loris and half-open connections. 300 connections that never send a
/// byte and one that trickles its handshake a byte every 300 ms do not stop a seeder from
/// serving a normal fetch, and it closes all of them once its 10 s handshake timeout passes.
#[test]
fn idle_and_slow_loris_connections_are_cut_and_do_not_block_seeding() {
    let net = 87;
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("loris.bin");
    write_random(&src, 2 * 1024 * 1024 + 99, 92);
    let seed = start_seed(&format!("127.{net}.0.200:7000"), &src, "none", &[]);
    let ih = seed.infohash();
    let target: SocketAddr = seed.addr.parse().unwrap();

    // The seed prints its JSON line before its listener is up: wait (bounded) until it
    // accepts connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(target).is_err() {
        assert!(
            Instant::now() < deadline,
            "the seeder never listened on {target}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle: Vec<TcpStream> = (0..300)
        .map(|_| TcpStream::connect(target).expect("connect idle"))
        .collect();
    let loris_closed = Arc::new(AtomicBool::new(false));
    let loris = {
        let closed = loris_closed.clone();
        std::thread::spawn(move || {
            let mut s = TcpStream::connect(target).expect("connect loris");
            let started = Instant::now();
            let hs = b"\x13BitTorrent protocol\0\0\0\0\0\x10\0\0";
            for b in hs.iter().cycle().take(200) {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(300));
                // A closed peer shows up as a read of 0 bytes / an error.
                s.set_nonblocking(true).unwrap();
                let mut buf = [0u8; 1];
                let gone = match s.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                s.set_nonblocking(false).unwrap();
                if gone {
                    break;
                }
            }
            closed.store(true, Ordering::SeqCst);
            started.elapsed()
        })
    };

    // Meanwhile a real fetch is served.
    let out = tmp.path().join("out");
    let (code, stdout, stderr) = fetch(&[
        &ih,
        "--output",
        out.to_str().unwrap(),
        "--bind",
        &format!("127.{net}.0.201:0"),
        "--bootstrap",
        "none",
        "--peer",
        &seed.addr,
        "--json",
    ]);
    assert_eq!(code, 0, "fetch failed during the flood: {stdout} {stderr}");
    assert_same_file(&src, &out.join("loris.bin"));

    let loris_time = loris.join().unwrap();
    assert!(loris_closed.load(Ordering::SeqCst));
    assert!(
        loris_time < Duration::from_secs(20),
        "slow-loris connection lived {loris_time:?}"
    );
    // The idle connections were closed by the seeder too.
    for mut s in idle {
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut buf = [0u8; 1];
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("an idle connection was not closed: {other:?}"),
        }
    }
    seed.stop();
}
