//! Torrents as real clients make them, fetched from a real client: a BEP 52 hybrid (v1+v2)
//! torrent with BEP 47 padding files made by libtorrent 2.0 (`create_torrent` without
//! `v1_only`), and file selection (`fetch --list`, `--files`, `--only`) against a libtorrent
//! seed. libtorrent (Debian's python3-libtorrent via tests/interop/lt_torrent.py) runs with
//! its DHT off; `dhtnode fetch --peer` dials it directly. Each test owns 127.N.0.0/16
//! (N = 170..=173) and kills what it starts (the `Proc` guards).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::files::{assert_same_file, files_under, write_random};
use common::{
    args, json, libtorrent_python, node_addr, run_dhtnode, start_dht_network, wait_announced, Proc,
};
use dhtnode::torrent::Metainfo;

const SCRIPT_TORRENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/lt_torrent.py");

fn start_lt(ip: &str) -> Proc {
    let py = libtorrent_python();
    let p = Proc::spawn(
        "lt_seed",
        py,
        &args(&[SCRIPT_TORRENT, "--ip", ip, "--no-dht"]),
    );
    let ready = json(&p.wait_line(Duration::from_secs(30), "ready", |l| l.contains("ready")));
    assert_eq!(ready["ready"], true, "lt_torrent.py failed: {ready}");
    p
}

/// Files whose sizes are off every piece boundary (so a hybrid torrent needs padding), one
/// of them executable, one in a subdirectory.
fn make_tree(dir: &Path, seed: u64) -> PathBuf {
    let root = dir.join("tree");
    write_random(&root.join("a.bin"), 100_003, seed);
    write_random(&root.join("run.sh"), 20_001, seed + 1);
    let mut perm = std::fs::metadata(root.join("run.sh"))
        .unwrap()
        .permissions();
    perm.set_mode(0o755);
    std::fs::set_permissions(root.join("run.sh"), perm).unwrap();
    write_random(&root.join("sub").join("b.bin"), 70_007, seed + 2);
    write_random(&root.join("sub").join("c.txt"), 5_000, seed + 3);
    root
}

/// libtorrent seeds `src`; returns (seeder, its ip:port, the .torrent it built).
fn lt_seed(ip: &str, src: &Path, torrent: &Path, hybrid: bool) -> (Proc, String) {
    let mut seeder = start_lt(ip);
    let r = common::lt::call(
        &mut seeder,
        serde_json::json!({"cmd": "seed", "path": src, "torrent_out": torrent,
                           "piece_size": 16384, "hybrid": hybrid, "timeout": 60}),
        Duration::from_secs(90),
    );
    let port = r["port"].as_u64().expect("seed reply has a port");
    (seeder, format!("{ip}:{port}"))
}

/// `dhtnode fetch` with `extra` arguments; (exit code, stdout, stderr).
fn fetch(
    target: &str,
    out: &Path,
    bind: &str,
    peer: &str,
    extra: &[&str],
) -> (i32, String, String) {
    let mut a = args(&[
        "fetch",
        target,
        "--output",
        out.to_str().unwrap(),
        "--bind",
        bind,
        "--bootstrap",
        "none",
        "--peer",
        peer,
    ]);
    a.extend(extra.iter().map(|s| s.to_string()));
    let (code, stdout, stderr) = run_dhtnode(&a, Duration::from_secs(120));
    eprintln!("{stderr}");
    (code, stdout, stderr)
}

/// Files under `dir` that a user sees (not our hidden resume/parts files).
fn visible_files(dir: &Path) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| {
            !p.components().any(|c| {
                c.as_os_str()
                    .to_str()
                    .is_some_and(|s| s.starts_with(".") && s.contains(".dhtnode-"))
            })
        })
        .collect()
}

#[test]
fn hybrid_torrent_with_padding_from_libtorrent_downloads_without_writing_padding() {
    let dir = tempfile::tempdir().unwrap();
    let src = make_tree(dir.path(), 170);
    let torrent = dir.path().join("hybrid.torrent");
    let (_seeder, peer) = lt_seed("127.170.0.100", &src, &torrent, true);

    // What libtorrent made really is a hybrid with padding files, or the test proves nothing.
    let mi = Metainfo::read_file(&torrent).unwrap();
    assert!(mi.info.hybrid, "libtorrent made no hybrid torrent");
    assert!(mi.info_hash_v2.is_some());
    let pads = mi.info.files.iter().filter(|f| f.pad).count();
    assert!(pads >= 2, "expected padding files, got {:?}", mi.info.files);
    let exec: Vec<_> = mi.info.files.iter().filter(|f| f.executable).collect();
    assert_eq!(
        exec.len(),
        1,
        "run.sh should carry attr x: {:?}",
        mi.info.files
    );

    let out = dir.path().join("out");
    let (code, stdout, _) = fetch(
        torrent.to_str().unwrap(),
        &out,
        "127.170.0.2:0",
        &peer,
        &["--json"],
    );
    assert_eq!(code, 0, "fetch failed: {stdout}");
    let report = json(stdout.lines().last().unwrap());
    assert_eq!(report["pieces_wanted"], report["pieces"]);
    // Exactly the source files: no `.pad` directory, no padding bytes anywhere.
    assert_eq!(visible_files(&out.join("tree")), files_under(&src));
    for rel in files_under(&src) {
        assert_same_file(&src.join(&rel), &out.join("tree").join(&rel));
    }
    assert!(!out.join("tree").join(".pad").exists());
    let mode = std::fs::metadata(out.join("tree/run.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert_ne!(mode & 0o100, 0, "run.sh is not executable: {mode:o}");
    let mode = std::fs::metadata(out.join("tree/a.bin"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0, "a.bin became executable: {mode:o}");
}

#[test]
fn list_then_fetch_selected_files_then_the_rest_from_libtorrent() {
    let dir = tempfile::tempdir().unwrap();
    let src = make_tree(dir.path(), 171);
    let torrent = dir.path().join("v1.torrent");
    let (_seeder, peer) = lt_seed("127.171.0.100", &src, &torrent, false);
    let out = dir.path().join("out");

    // --list from the .torrent: index, size, path; nothing written.
    let (code, stdout, _) = fetch(
        torrent.to_str().unwrap(),
        &out,
        "127.171.0.2:0",
        &peer,
        &["--list"],
    );
    assert_eq!(code, 0);
    let rows: Vec<Vec<&str>> = stdout.lines().map(|l| l.split('\t').collect()).collect();
    let mut paths: Vec<&str> = rows.iter().map(|r| r[2]).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "tree/a.bin",
            "tree/run.sh",
            "tree/sub/b.bin",
            "tree/sub/c.txt"
        ]
    );
    // libtorrent orders the files its own way: find b.bin's number as a user would.
    let b_row = rows.iter().find(|r| r[2] == "tree/sub/b.bin").unwrap();
    assert_eq!(b_row[1], "70007");
    let b_index = b_row[0].to_string();
    let listed_index: Vec<String> = rows.iter().map(|r| r[0].to_string()).collect();
    assert_eq!(listed_index, ["0", "1", "2", "3"]);
    assert!(!out.exists() || files_under(&out).is_empty());

    // --list of a magnet: the metadata comes from the peer (BEP 9); still nothing written.
    let mi = Metainfo::read_file(&torrent).unwrap();
    let magnet = format!("magnet:?xt=urn:btih:{}", mi.info_hash.to_hex());
    let (code, stdout, _) = fetch(&magnet, &out, "127.171.0.3:0", &peer, &["--list", "--json"]);
    assert_eq!(code, 0, "{stdout}");
    let listing = json(stdout.lines().last().unwrap());
    assert_eq!(listing["files"].as_array().unwrap().len(), 4);
    let b_json = listing["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "tree/sub/b.bin")
        .unwrap();
    assert_eq!(b_json["index"].to_string(), b_index);
    assert_eq!(b_json["length"], 70_007);
    assert!(!out.exists() || files_under(&out).is_empty());

    // Only b.bin: its edge pieces are fetched whole, but no other file appears.
    let (code, stdout, _) = fetch(
        torrent.to_str().unwrap(),
        &out,
        "127.171.0.4:0",
        &peer,
        &["--files", &b_index, "--json"],
    );
    assert_eq!(code, 0, "{stdout}");
    let report = json(stdout.lines().last().unwrap());
    assert_eq!(report["bytes_wanted"], 70_007);
    assert!(report["pieces_wanted"].as_u64() < report["pieces"].as_u64());
    assert_eq!(
        visible_files(&out),
        [PathBuf::from("tree/sub/b.bin")],
        "only the selected file may be visible"
    );
    assert_same_file(&src.join("sub/b.bin"), &out.join("tree/sub/b.bin"));

    // Add the text file by pattern: b.bin is resumed, not fetched again.
    let (code, stdout, _) = fetch(
        torrent.to_str().unwrap(),
        &out,
        "127.171.0.5:0",
        &peer,
        &["--only", "*.txt", "--files", &b_index, "--json"],
    );
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        visible_files(&out),
        [
            PathBuf::from("tree/sub/b.bin"),
            PathBuf::from("tree/sub/c.txt")
        ]
    );
    assert_same_file(&src.join("sub/c.txt"), &out.join("tree/sub/c.txt"));

    // Then everything: the tree is complete and byte-identical.
    let (code, stdout, _) = fetch(
        torrent.to_str().unwrap(),
        &out,
        "127.171.0.6:0",
        &peer,
        &["--json"],
    );
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(visible_files(&out.join("tree")), files_under(&src));
    for rel in files_under(&src) {
        assert_same_file(&src.join(&rel), &out.join("tree").join(&rel));
    }

    // A selection that does not fit is refused up front, saying why.
    let (code, _, stderr) = fetch(
        torrent.to_str().unwrap(),
        &out,
        "127.171.0.7:0",
        &peer,
        &["--files", "9"],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("out of range"), "{stderr}");
}

#[test]
fn v2_only_magnets_are_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = fetch(
        "magnet:?xt=urn:btmh:1220caf1e1c30e81cb361b9ee167c4aa64228a7fa4fa9f6105232b28ad099f3a302e",
        dir.path(),
        "127.172.0.2:0",
        "127.172.0.3:1",
        &[],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("v2-only"), "{stderr}");
}

/// A hybrid torrent (made by libtorrent) seeded by dhtnode is announced under both
/// info-hashes (v1, and the v2 hash cut to 20 bytes, BEP 52), and a dhtnode fetch that
/// knows only the v1 magnet finds it through the DHT and downloads it byte-identical; so
/// does libtorrent given the .torrent. (By magnet, libtorrent 2.0 knowing only the v1 hash
/// of a hybrid stalls after the metadata whoever seeds, qBittorrent issue 16303; knowing
/// both hashes it worked in 3 of 4 runs here, stalling once, likely on the v2 hash
/// requests we do not answer: not asserted.)
#[test]
fn dhtnode_seeds_a_hybrid_under_both_info_hashes_to_dhtnode_and_libtorrent() {
    let net = 173u8;
    let dir = tempfile::tempdir().unwrap();
    let src = make_tree(&dir.path().join("src"), 173);
    let torrent = dir.path().join("hybrid.torrent");
    // libtorrent makes the hybrid .torrent (and is then stopped: dhtnode is the only seed).
    drop(lt_seed("127.173.0.90", &src, &torrent, true));
    let dht = start_dht_network(net, 6, &dir.path().join("dht"), &[]);
    let seed_addr = format!("127.{net}.0.200:7000");
    let seed = Proc::dhtnode(
        "seed",
        &args(&[
            "seed",
            src.to_str().unwrap(),
            "--torrent",
            torrent.to_str().unwrap(),
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
    let v1 = info["infohash"].as_str().unwrap().to_string();
    let v2 = info["infohash_v2"]
        .as_str()
        .expect("hybrid has a v2 hash")
        .to_string();
    assert_eq!(v2.len(), 64);
    wait_announced(net, &v1, &node_addr(net, 4), &seed_addr);
    wait_announced(net, &v2[..40], &node_addr(net, 5), &seed_addr);

    let out = dir.path().join("out");
    let magnet = format!("magnet:?xt=urn:btih:{v1}");
    let (code, stdout, stderr) = run_dhtnode(
        &args(&[
            "fetch",
            &magnet,
            "--output",
            out.to_str().unwrap(),
            "--bind",
            &format!("127.{net}.0.150:0"),
            "--bootstrap",
            &node_addr(net, 3),
            "--json",
        ]),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "fetch failed: {stdout}\n{stderr}");
    assert_eq!(visible_files(&out.join("tree")), files_under(&src));
    for rel in files_under(&src) {
        assert_same_file(&src.join(&rel), &out.join("tree").join(&rel));
    }

    // libtorrent with the .torrent (both hashes, and the v2 piece layers it would otherwise
    // ask us for with BEP 52 hash requests, which we do not answer) finds the seed through
    // the DHT and downloads; it may handshake with either hash.
    let nodes: Vec<String> = (0..6).map(|i| node_addr(net, i)).collect();
    let mut leecher = common::lt::start_session(
        "lt_download",
        &format!("127.{net}.0.100"),
        &nodes,
        &common::SpawnOpts::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let save = dir.path().join("lt-save");
    let r = common::lt::call(
        &mut leecher,
        serde_json::json!({"cmd": "download", "info_hash": v1, "torrent": torrent,
                           "save_path": save, "timeout": 90}),
        Duration::from_secs(120),
    );
    assert_eq!(r["finished"], true, "{r}");
    for rel in files_under(&src) {
        assert_same_file(&src.join(&rel), &save.join("tree").join(&rel));
    }
    drop(leecher);
    drop(seed);
    drop(dht);
}
