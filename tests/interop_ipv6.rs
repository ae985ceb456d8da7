//! BEP 32 end to end: a dual-stack network of `dhtnode bootstrap` nodes and libtorrent 2.0
//! sessions (Debian's python3-libtorrent, tests/interop/lt_torrent.py) on IPv6, inside a
//! network namespace each test creates for itself (several `fd00::N` addresses on its `lo`,
//! see tests/common/netns.rs), so nothing leaves the namespace and tests run in parallel.
//! The libtorrent sessions listen on IPv6 only, so every peer connection and every DHT
//! packet they take part in is IPv6:
//! - `dhtnode lookup` finds a libtorrent seeder announced over IPv6 (an 18-byte `values`
//!   entry), and the bootstrap node's saved state keeps its IPv6 table;
//! - libtorrent finds `dhtnode seed` through the IPv6 DHT and downloads from it over IPv6 TCP;
//! - `dhtnode fetch` downloads from a libtorrent seeder over IPv6;
//! - a seed on the `[::]` wildcard names a reachable address of its own as BEP 7 `ipv6`.
//!
//! Addresses inside every namespace: dhtnode bootstrap nodes on 127.0.0.1 / [fd00::1] and
//! 127.0.0.6 / [fd00::6] (port 6881), libtorrent on [fd00::2], dhtnode seed or fetch on
//! 127.0.0.4 / [fd00::4], lookups from [fd00::9].

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::files::{assert_same_file, write_random};
use common::lt::LT_TORRENT;
use common::netns::Netns;
use common::{args, bin, json, libtorrent_python, Proc};

const BOOT1: &str = "[fd00::1]:6881";
const BOOT2: &str = "[fd00::6]:6881";
const LT_IP: &str = "fd00::2";

/// Two dual-stack `dhtnode bootstrap` nodes, the second joined through the first.
fn start_bootstraps(ns: &Netns, dir: &Path) -> Vec<Proc> {
    let boot = |name: &str, v4: &str, v6: &str, via: &str| {
        let state = dir.join(name);
        ns.spawn(
            name,
            bin(),
            &args(&[
                "bootstrap",
                "--bind",
                v4,
                "--bind",
                v6,
                "--bootstrap",
                via,
                "--state-dir",
                state.to_str().expect("utf-8 temp path"),
                "--status-interval",
                "1",
                "--json",
            ]),
        )
    };
    let first = boot("boot1", "127.0.0.1:6881", BOOT1, "none");
    first
        .wait_json(Duration::from_secs(20), |v| v.get("ipv6").is_some())
        .expect("bootstrap 1 printed no dual-stack status line within 20 s");
    let second = boot("boot2", "127.0.0.6:6881", BOOT2, BOOT1);
    second
        .wait_json(Duration::from_secs(30), |v| {
            v["ipv6"]["nodes"].as_u64() >= Some(1)
        })
        .expect("bootstrap 2 never had bootstrap 1 in its IPv6 table within 30 s");
    vec![first, second]
}

/// A libtorrent session listening on [fd00::2] only, wired to both bootstrap nodes.
fn start_lt(ns: &Netns, name: &str) -> Proc {
    let py = libtorrent_python();
    let mut a = args(&[LT_TORRENT, "--ip", LT_IP, "--bootstrap", BOOT1]);
    for n in [BOOT1, BOOT2] {
        a.extend(args(&["--add-node", n]));
    }
    let p = ns.spawn(name, py, &a);
    let r = p
        .wait_json(Duration::from_secs(30), |v| v.get("ready").is_some())
        .unwrap_or_else(|| panic!("{name}: lt_torrent.py printed no ready line within 30 s"));
    assert_eq!(
        r["ready"], true,
        "{name}: lt_torrent.py failed to start: {r}"
    );
    p
}

/// One request to the libtorrent harness; fails the test unless the reply is ok.
fn lt_call(p: &mut Proc, cmd: serde_json::Value, timeout: Duration) -> serde_json::Value {
    let want = cmd["cmd"].as_str().expect("cmd").to_string();
    p.send_line(&cmd.to_string());
    let r = p
        .wait_json(timeout, |v| v["cmd"].as_str() == Some(want.as_str()))
        .unwrap_or_else(|| panic!("libtorrent gave no reply to {cmd} within {timeout:?}"));
    assert_eq!(r["ok"], true, "libtorrent command {cmd} failed: {r}");
    r
}

/// libtorrent seeds a random file of `len` bytes, announced (and visible) in the IPv6 DHT.
fn lt_seed(
    lt: &mut Proc,
    dir: &Path,
    len: usize,
    seed: u64,
) -> (serde_json::Value, std::path::PathBuf) {
    let src = dir.join("payload.bin");
    write_random(&src, len, seed);
    let s = lt_call(
        lt,
        serde_json::json!({"cmd": "seed", "path": src, "wait_announced": true, "timeout": 60}),
        Duration::from_secs(90),
    );
    (s, src)
}

/// `dhtnode lookup IH` from [fd00::9] over the IPv6 DHT; the peers it found.
fn lookup6(ns: &Netns, ih: &str) -> (Vec<String>, String) {
    let (_code, out, err) = ns.run(
        bin(),
        &args(&[
            "lookup",
            ih,
            "--bind",
            "127.0.0.9:0",
            "--bind",
            "[fd00::9]:0",
            "--bootstrap",
            BOOT1,
            "--json",
            "--timeout",
            "10",
        ]),
        Duration::from_secs(30),
    );
    let peers = serde_json::from_str::<serde_json::Value>(out.trim())
        .ok()
        .and_then(|r| {
            r["peers"].as_array().map(|ps| {
                ps.iter()
                    .filter_map(|p| p.as_str().map(str::to_string))
                    .collect()
            })
        })
        .unwrap_or_default();
    (peers, format!("stdout {out} stderr {err}"))
}

/// Repeats [`lookup6`] (bounded, 60 s) until `want` is among the peers.
fn wait_visible6(ns: &Netns, ih: &str, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    while Instant::now() < deadline {
        let (peers, log) = lookup6(ns, ih);
        if peers.iter().any(|p| p == want) {
            return peers;
        }
        last = log;
    }
    panic!("{want} never became visible in the IPv6 DHT for {ih}; last lookup: {last}");
}

#[test]
fn dhtnode_lookup_finds_a_libtorrent_peer_announced_over_ipv6() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new("v6lookup");
    let mut boots = start_bootstraps(&ns, tmp.path());
    let mut lt = start_lt(&ns, "lt_seed");
    let (s, _) = lt_seed(&mut lt, tmp.path(), 100_000, 61);
    let ih = s["info_hash"].as_str().expect("info_hash").to_string();
    let want = format!("[{LT_IP}]:{}", s["port"]);
    let peers = wait_visible6(&ns, &ih, &want);
    assert!(
        peers.iter().all(|p| p.starts_with('[')),
        "only IPv6 peers announced this torrent: {peers:?}"
    );

    // The bootstrap node's saved state keeps its IPv6 table (BEP 32 `nodes6`).
    let boot1 = boots.remove(0);
    boot1.signal(libc::SIGTERM);
    let mut boot1 = boot1;
    assert!(
        boot1
            .exit_within(Duration::from_secs(20))
            .is_some_and(|s| s.success()),
        "bootstrap 1 did not exit cleanly on SIGTERM"
    );
    let state = std::fs::read(tmp.path().join("boot1").join("dht-state.benc")).expect("state file");
    let at = state
        .windows(8)
        .position(|w| w == b"6:nodes6")
        .expect("the saved state has no IPv6 table");
    // `6:nodes6` then `<len>:` and 38 bytes a node: at least bootstrap 2 and libtorrent.
    let rest = state.get(at + 8..).unwrap_or_default();
    let colon = rest.iter().position(|b| *b == b':').expect("nodes6 length");
    let len: usize = std::str::from_utf8(rest.get(..colon).unwrap_or_default())
        .ok()
        .and_then(|n| n.parse().ok())
        .expect("nodes6 length is a number");
    assert!(len >= 38 && len.is_multiple_of(38), "nodes6 of {len} bytes");
}

#[test]
fn libtorrent_downloads_from_dhtnode_seed_found_through_the_ipv6_dht() {
    libtorrent_python();
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new("v6seed");
    let _boots = start_bootstraps(&ns, tmp.path());
    let src = tmp.path().join("seeded.bin");
    write_random(&src, 3 * 1024 * 1024 + 1234, 62);
    let seed = ns.spawn(
        "seed",
        bin(),
        &args(&[
            "seed",
            src.to_str().expect("utf-8 temp path"),
            "--bind",
            "127.0.0.4:7000",
            "--bind",
            "[fd00::4]:7000",
            "--bootstrap",
            BOOT1,
            "--json",
        ]),
    );
    let info = seed
        .wait_json(Duration::from_secs(60), |v| v.get("infohash").is_some())
        .expect("dhtnode seed printed no JSON line within 60 s");
    let ih = info["infohash"].as_str().expect("infohash").to_string();
    // Announced into the IPv6 DHT with the IPv6 listener's port.
    wait_visible6(&ns, &ih, "[fd00::4]:7000");

    let mut lt = start_lt(&ns, "lt_download");
    let save = tmp.path().join("lt-save");
    let started = Instant::now();
    let r = lt_call(
        &mut lt,
        serde_json::json!({"cmd": "download", "info_hash": ih, "save_path": save, "timeout": 90}),
        Duration::from_secs(120),
    );
    eprintln!(
        "libtorrent download over IPv6: {r} ({:?})",
        started.elapsed()
    );
    assert_eq!(r["finished"], true, "{r}");
    assert_eq!(r["bytes"], info["bytes"], "{r} vs {info}");
    assert_same_file(&src, &save.join(info["name"].as_str().expect("name")));
    drop(lt);
    drop(seed);
}

#[test]
fn dhtnode_fetch_downloads_from_a_libtorrent_seed_over_ipv6() {
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new("v6fetch");
    let _boots = start_bootstraps(&ns, tmp.path());
    let mut lt = start_lt(&ns, "lt_seed");
    let (s, src) = lt_seed(&mut lt, tmp.path(), 2 * 1024 * 1024 + 77, 63);
    let ih = s["info_hash"].as_str().expect("info_hash").to_string();
    let out = tmp.path().join("out");
    let started = Instant::now();
    let (code, stdout, stderr) = ns.run(
        bin(),
        &args(&[
            "fetch",
            &ih,
            "--output",
            out.to_str().expect("utf-8 temp path"),
            "--bind",
            "127.0.0.4:0",
            "--bind",
            "[fd00::4]:0",
            "--bootstrap",
            BOOT1,
            "--json",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(
        code,
        0,
        "dhtnode fetch over IPv6 failed after {:?}\nstdout: {stdout}\nstderr: {stderr}",
        started.elapsed()
    );
    let r = json(stdout.lines().last().expect("JSON report"));
    eprintln!("dhtnode fetch over IPv6: {r}");
    assert_eq!(r["infohash"].as_str(), Some(ih.as_str()), "{r}");
    assert_eq!(r["bytes"], s["bytes"], "{r}");
    assert!(r["peers_connected"].as_u64().unwrap_or(0) >= 1, "{r}");
    assert_same_file(&src, &out.join(s["name"].as_str().expect("name")));
}

/// Connects to a BitTorrent peer at argv[1]:argv[2] for info-hash argv[3] (hex), reads its
/// BEP 10 extension handshake and prints its `ipv6` key (or `none`); then dials that address
/// on the same port and prints `reachable` when it accepts. Bounded by socket timeouts.
const EXT_PROBE: &str = r#"
import socket, struct, sys
host, port, ih = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
s = socket.create_connection((host, port), timeout=10)
s.sendall(b"\x13BitTorrent protocol" + bytes([0, 0, 0, 0, 0, 0x10, 0, 0]) + ih + b"-PY0001-" + b"x" * 12)
def read(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c: raise SystemExit("closed")
        b += c
    return b
read(68)
for _ in range(50):
    (n,) = struct.unpack(">I", read(4))
    m = read(n) if n else b""
    if len(m) >= 2 and m[0] == 20 and m[1] == 0:
        i = m.find(b"4:ipv616:")
        if i < 0:
            print("none"); sys.exit(0)
        ip = socket.inet_ntop(socket.AF_INET6, m[i + 9:i + 25])
        print(ip)
        socket.create_connection((ip, port), timeout=10).close()
        print("reachable"); sys.exit(0)
print("no extension handshake")
"#;

#[test]
fn a_seed_listening_on_the_ipv6_wildcard_names_a_reachable_ipv6_address() {
    // BEP 7 `ipv6` with `--bind [::]:PORT`: the seed picks a non-loopback local address of
    // the namespace (one of fd00::1..9) and names it in its extension handshake over IPv4.
    let tmp = tempfile::tempdir().unwrap();
    let ns = Netns::new("v6wild");
    let src = tmp.path().join("wild.bin");
    write_random(&src, 64 * 1024, 64);
    let seed = ns.spawn(
        "seed",
        bin(),
        &args(&[
            "seed",
            src.to_str().expect("utf-8 temp path"),
            "--bind",
            "127.0.0.4:7000",
            "--bind",
            "[::]:7000",
            "--bootstrap",
            "none",
            "--json",
        ]),
    );
    let info = seed
        .wait_json(Duration::from_secs(60), |v| v.get("infohash").is_some())
        .expect("dhtnode seed printed no JSON line within 60 s");
    let ih = info["infohash"].as_str().expect("infohash").to_string();
    let (code, out, err) = ns.run(
        "/usr/bin/python3",
        &args(&["-c", EXT_PROBE, "127.0.0.4", "7000", &ih]),
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "probe failed: {out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    let ip: std::net::Ipv6Addr = lines
        .first()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("no ipv6 key in the seed's extension handshake: {out} {err}"));
    assert!(
        ip.segments().first() == Some(&0xfd00),
        "advertised {ip}, not one of the namespace's fd00:: addresses"
    );
    assert_eq!(lines.get(1), Some(&"reachable"), "{out} {err}");
    drop(seed);
}
