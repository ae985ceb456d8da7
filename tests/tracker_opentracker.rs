//! Trackers as a peer source, against Debian's real `opentracker` and real libtorrent
//! (python3-libtorrent via tests/interop/lt_torrent.py, DHT off), with no DHT anywhere:
//! - a libtorrent seeder registered only on the tracker; `dhtnode fetch x.torrent --bootstrap
//!   none` finds it over HTTP (through an announce-list whose first tier is all broken
//!   trackers: refused, garbage, a redirect loop, a failure reason, a silent UDP port);
//! - the same over UDP (BEP 15) from a magnet link with `tr=udp://...`;
//! - `dhtnode seed --tracker http://...` is found by a libtorrent downloader through the
//!   tracker;
//! - scrape over HTTP and UDP through the library API, which also shows dhtnode's
//!   `completed` (counted) and `stopped` (off the swarm) announces arrived.
//!
//! Debian builds opentracker whitelist-only ("private mode"): each test writes its own config
//! (`listen.tcp_udp`, `access.whitelist` with the info-hash in hex) into a temp dir that
//! opentracker chroots into, and kills it at the end. Each test owns 127.N.0.0/16,
//! N = 150..=153.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::files::{assert_same_file, write_random};
use common::{args, json, libtorrent_python, run_dhtnode, Proc};
use dhtnode::torrent::{build_torrent, BuildOptions, Built};

const OPENTRACKER: &str = "/usr/bin/opentracker";
const SCRIPT_TORRENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_torrent.py");

/// A running opentracker on `ip:6969` (TCP and UDP), killed on drop with its temp dir.
struct Tracker {
    _proc: Proc,
    _dir: tempfile::TempDir,
    http: String,
    udp: String,
}

/// Starts opentracker on `ip:6969` with `hashes` (hex) whitelisted; waits (bounded) until
/// its TCP port accepts connections.
fn start_opentracker(ip: &str, hashes: &[String]) -> Tracker {
    assert!(
        Path::new(OPENTRACKER).exists(),
        "tracker tests need Debian's opentracker: run `apt-get install -y opentracker` (as root), then rerun"
    );
    let dir = tempfile::tempdir().unwrap();
    // opentracker chroots into tracker.rootdir and drops to user nobody: the dir and the
    // whitelist must be readable by nobody; the whitelist path is inside the chroot.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let wl = dir.path().join("whitelist.txt");
    std::fs::write(&wl, hashes.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&wl, std::fs::Permissions::from_mode(0o644)).unwrap();
    let conf = dir.path().join("opentracker.conf");
    std::fs::write(
        &conf,
        format!(
            "listen.tcp_udp {ip}:6969\naccess.whitelist /whitelist.txt\ntracker.rootdir {}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let proc = Proc::spawn(
        "opentracker",
        OPENTRACKER,
        &args(&["-f", conf.to_str().unwrap()]),
    );
    let addr: SocketAddr = format!("{ip}:6969").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "opentracker did not listen on {addr} within 10 s (it needs root to chroot)"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Tracker {
        _proc: proc,
        _dir: dir,
        http: format!("http://{ip}:6969/announce"),
        udp: format!("udp://{ip}:6969/announce"),
    }
}

/// A libtorrent session without the DHT on `ip`.
fn start_lt(name: &str, ip: &str) -> Proc {
    let py = libtorrent_python();
    let p = Proc::spawn(name, py, &args(&[SCRIPT_TORRENT, "--ip", ip, "--no-dht"]));
    let ready = json(&p.wait_line(Duration::from_secs(30), "ready", |l| l.contains("ready")));
    assert_eq!(ready["ready"], true, "lt_torrent.py failed: {ready}");
    p
}

/// Source data: a few MiB in two files.
fn make_data(dir: &Path, seed: u64) -> PathBuf {
    let root = dir.join("tree");
    write_random(&root.join("a.bin"), 2 * 1024 * 1024 + 17, seed);
    write_random(&root.join("sub").join("b.bin"), 700_001, seed + 1);
    root
}

fn build(src: &Path, trackers: &[String]) -> Built {
    build_torrent(
        src,
        &BuildOptions {
            trackers: trackers.to_vec(),
            ..BuildOptions::default()
        },
    )
    .unwrap()
}

fn assert_same_tree(want: &Path, got: &Path) {
    for rel in ["a.bin", "sub/b.bin"] {
        assert_same_file(&want.join(rel), &got.join(rel));
    }
}

/// A tiny HTTP server of broken trackers on `ip` (port 0): `/garbage` answers HTML,
/// `/redirect` redirects to itself for ever, `/failure` gives a bencoded failure reason.
/// Serves until dropped.
struct BadTrackers {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl BadTrackers {
    fn start(ip: &str) -> BadTrackers {
        let l = TcpListener::bind((ip, 0)).unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let _ = serve_bad(c, port);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        BadTrackers { port, stop }
    }
}

impl Drop for BadTrackers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_bad(mut c: TcpStream, port: u16) -> std::io::Result<()> {
    c.set_nonblocking(false)?;
    c.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&c).take(8192)).read_line(&mut line)?;
    let path = line.split(' ').nth(1).unwrap_or("");
    let (status, extra, body): (&str, String, &[u8]) = if path.starts_with("/garbage") {
        (
            "200 OK",
            String::new(),
            b"<html><body>502 Bad Gateway</body></html>",
        )
    } else if path.starts_with("/redirect") {
        (
            "302 Found",
            format!("Location: http://127.150.0.1:{port}/redirect/announce\r\n"),
            b"",
        )
    } else {
        (
            "200 OK",
            String::new(),
            b"d14:failure reason22:torrent not registerede",
        )
    };
    write!(
        c,
        "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    c.write_all(body)?;
    c.flush()
}

/// libtorrent seeds `src` (the torrent `t`), registered only on the tracker.
fn lt_seed(ip: &str, src: &Path, t: &Path, tracker: &str) -> Proc {
    let mut seeder = start_lt("lt_seed", ip);
    let r = common::lt::call(
        &mut seeder,
        serde_json::json!({"cmd": "seed", "path": src, "torrent": t, "trackers": [tracker],
                           "wait_tracker": true, "timeout": 60}),
        Duration::from_secs(90),
    );
    eprintln!("libtorrent seeds through the tracker: {r}");
    seeder
}

/// `dhtnode fetch TARGET --bootstrap none` from `bind`, which must succeed; (stdout, stderr).
fn fetch(target: &str, out: &Path, bind: &str) -> (String, String) {
    let (code, stdout, stderr) = run_dhtnode(
        &args(&[
            "fetch",
            target,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            bind,
            "--bootstrap",
            "none",
            "--json",
        ]),
        Duration::from_secs(120),
    );
    eprintln!("{stderr}");
    assert_eq!(code, 0, "fetch failed: {stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn dhtnode_fetches_a_torrent_from_a_libtorrent_seed_found_through_an_http_tracker() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_data(&tmp.path().join("src"), 150);
    let bad = BadTrackers::start("127.150.0.1");
    let good = "http://127.150.0.1:6969/announce".to_string();
    let b = |p: &str| format!("http://127.150.0.1:{}/{p}/announce", bad.port);
    let mut built = build(&src, std::slice::from_ref(&good));
    // Tier 1: every way a tracker can be broken; tier 2: the real one.
    built.metainfo.announce_list = vec![
        vec![
            "http://127.150.0.1:1/announce".into(),
            b("garbage"),
            b("redirect"),
            b("failure"),
            "udp://127.150.0.1:2/announce".into(),
        ],
        vec![good.clone()],
    ];
    let ih = built.metainfo.info_hash.to_hex();
    let torrent = tmp.path().join("x.torrent");
    std::fs::write(&torrent, built.metainfo.to_torrent_bytes()).unwrap();
    let _tracker = start_opentracker("127.150.0.1", std::slice::from_ref(&ih));
    let _seeder = lt_seed("127.150.0.100", &src, &torrent, &good);

    let out = tmp.path().join("out");
    let (stdout, stderr) = fetch(torrent.to_str().unwrap(), &out, "127.150.0.2:0");
    let report = json(stdout.lines().last().unwrap());
    assert_eq!(report["infohash"], ih.as_str());
    assert_same_tree(&src, &out.join("tree"));
    // One clear line for each broken tracker, and the download went on.
    for (what, needle) in [
        ("refused", ":1/announce: HTTP:"),
        ("garbage", "/garbage/announce: malformed tracker answer"),
        (
            "redirect loop",
            "/redirect/announce: HTTP: more than 3 redirects",
        ),
        ("failure reason", "tracker refused: torrent not registered"),
        ("udp refused", "udp://127.150.0.1:2:"),
    ] {
        assert!(
            stderr.lines().filter(|l| l.contains(needle)).count() >= 1,
            "no log line for the {what} tracker ({needle:?}) in:\n{stderr}"
        );
    }
}

#[test]
fn dhtnode_fetches_a_magnet_from_a_libtorrent_seed_found_through_a_udp_tracker() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_data(&tmp.path().join("src"), 151);
    let ip = "127.151.0.1";
    let built = build(&src, &[format!("http://{ip}:6969/announce")]);
    let ih = built.metainfo.info_hash.to_hex();
    let torrent = tmp.path().join("x.torrent");
    std::fs::write(&torrent, &built.torrent).unwrap();
    let tracker = start_opentracker(ip, std::slice::from_ref(&ih));
    let _seeder = lt_seed("127.151.0.100", &src, &torrent, &tracker.http);

    let magnet = format!(
        "magnet:?xt=urn:btih:{ih}&dn=tree&tr={}",
        tracker.udp.replace(':', "%3A").replace('/', "%2F")
    );
    let out = tmp.path().join("out");
    fetch(&magnet, &out, "127.151.0.2:0");
    assert_same_tree(&src, &out.join("tree"));

    // Through the library, over both transports: dhtnode's `completed` was counted (scrape)
    // and its `stopped` took it off the swarm (an announce lists the swarm's peers: none is
    // at dhtnode's address). The swarm is checked by address, not by counting seeders: CI
    // once saw two seeders for 5 s with no warning from the fetch, and a count cannot say
    // which peer was still listed (a second entry of the libtorrent seeder, from another
    // port, would read the same).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use dhtnode::tracker::{
            AnnounceEvent, AnnounceRequest, Client, ClientConfig, TrackerUrl, NUMWANT,
        };
        let ours: std::net::IpAddr = "127.151.0.2".parse().unwrap();
        let seeder: std::net::IpAddr = "127.151.0.100".parse().unwrap();
        let mut c = Client::new(ClientConfig::new("127.151.0.3".parse().unwrap())).unwrap();
        let ih = built.metainfo.info_hash;
        let probe = AnnounceRequest {
            info_hash: ih,
            peer_id: dhtnode::id::Id([7; 20]),
            port: 9,
            uploaded: 0,
            downloaded: 0,
            left: 1,
            event: AnnounceEvent::None,
            numwant: NUMWANT,
            key: 7,
        };
        for url in [&tracker.http, &tracker.udp] {
            let url = TrackerUrl::parse(url).unwrap();
            // The fetch has exited after its `stopped` was answered, so one announce
            // should see the swarm without it; poll, bounded, in case the tracker is slow.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let peers = loop {
                let a = c
                    .announce(&url, &probe)
                    .await
                    .unwrap_or_else(|e| panic!("announce to {url}: {e}"));
                if a.peers.iter().all(|p| p.ip() != ours) || std::time::Instant::now() > deadline {
                    break a.peers;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert!(
                peers.iter().all(|p| p.ip() != ours),
                "{url}: dhtnode's `stopped` did not take it off the swarm: {peers:?}"
            );
            assert!(
                peers.iter().any(|p| p.ip() == seeder),
                "{url}: the libtorrent seeder is not in the swarm: {peers:?}"
            );
            let s = c
                .scrape(&url, &ih)
                .await
                .unwrap_or_else(|e| panic!("scrape {url}: {e}"));
            assert!(s.complete >= 1, "scrape {url}: no seeder counted: {s:?}");
            assert!(
                s.downloaded >= 1,
                "scrape {url}: no completed event counted: {s:?}"
            );
        }
    });
}

#[test]
fn libtorrent_finds_a_dhtnode_seed_through_an_http_tracker() {
    let tmp = tempfile::tempdir().unwrap();
    let src = make_data(&tmp.path().join("src"), 152);
    let ip = "127.152.0.1";
    let url = format!("http://{ip}:6969/announce");
    // `seed` builds the same torrent (deterministic), so the whitelist can be written first.
    let ih = build(&src, std::slice::from_ref(&url))
        .metainfo
        .info_hash
        .to_hex();
    let _tracker = start_opentracker(ip, std::slice::from_ref(&ih));
    let out_torrent = tmp.path().join("seed.torrent");
    let seed = Proc::dhtnode(
        "seed",
        &args(&[
            "seed",
            src.to_str().unwrap(),
            "--bind",
            "127.152.0.2:0",
            "--bootstrap",
            "none",
            "--tracker",
            &url,
            "--torrent-out",
            out_torrent.to_str().unwrap(),
            "--json",
        ]),
    );
    let info = seed
        .wait_json(Duration::from_secs(30), |v| v.get("infohash").is_some())
        .expect("seed printed no JSON line");
    assert_eq!(info["infohash"], ih.as_str(), "seed built another torrent");
    assert!(
        info["magnet"]
            .as_str()
            .unwrap()
            .contains("&tr=http%3A%2F%2F127.152.0.1"),
        "{info}"
    );
    let m = dhtnode::torrent::Metainfo::read_file(&out_torrent).unwrap();
    assert_eq!(m.announce.as_deref(), Some(url.as_str()));

    let mut lt = start_lt("lt_fetch", "127.152.0.100");
    let save = tmp.path().join("lt_out");
    let r = common::lt::call(
        &mut lt,
        serde_json::json!({"cmd": "download", "info_hash": ih, "save_path": save,
                           "trackers": [url], "timeout": 90}),
        Duration::from_secs(120),
    );
    assert_eq!(r["finished"], true, "{r}");
    assert_same_tree(&src, &save.join("tree"));
    drop(seed);
}
