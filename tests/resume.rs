//! Resume you can trust, end to end through the binary: a completed download whose files are
//! deleted, truncated or overwritten in part is repaired by running the same `fetch` again,
//! fetching exactly the damaged pieces; `--recheck` finds a flipped byte hidden behind a
//! restored mtime; data copied in from elsewhere (no resume record) is checked and nothing is
//! downloaded; `seed --torrent` of damaged data serves the pieces that match.
//!
//! This file owns 127.140.0.0/16 (one /24 per test).

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::files::{assert_same_tree, random_bytes, write_random};
use common::{fetch_args, json, run_dhtnode, start_seed, Proc};
use dhtnode::torrent::{Layout, Metainfo};

const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Sizes of the source tree's files: pieces span file boundaries.
const FILES: [(&str, usize); 3] = [
    ("a.bin", 700 * 1024 + 123),
    ("b.bin", 1200 * 1024 + 77),
    ("c.bin", 900 * 1024 + 5),
];

/// Writes the source tree `dir/tree/...` and returns its top folder.
fn source_tree(dir: &Path, seed: u64) -> PathBuf {
    let top = dir.join("tree");
    for (i, (name, len)) in FILES.iter().enumerate() {
        write_random(&top.join(name), *len, seed + i as u64);
    }
    top
}

/// The torrent's bytes end to end (metainfo order) under `dir`, missing files as zeros and
/// short files zero-padded: what a fetch into `dir` finds on disk once it has sized them.
fn stream_as_fetch_sees_it(mi: &Metainfo, dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in &mi.info.files {
        let mut bytes = std::fs::read(dir.join(f.path.as_str())).unwrap_or_default();
        bytes.resize(f.length as usize, 0);
        all.extend_from_slice(&bytes);
    }
    all
}

/// Pieces whose bytes under `dir` differ from the source's.
fn damaged_pieces(mi: &Metainfo, src: &[u8], dir: &Path) -> Vec<u32> {
    let got = stream_as_fetch_sees_it(mi, dir);
    let pl = mi.info.piece_length as usize;
    (0..mi.info.num_pieces() as u32)
        .filter(|&p| {
            let a = p as usize * pl;
            let b = (a + pl).min(src.len());
            src[a..b] != got[a..b]
        })
        .collect()
}

/// A seeder of `top` on `bind` (no DHT), writing its .torrent to `torrent`.
fn seed_tree(top: &Path, bind: &str, torrent: &Path) -> (Proc, serde_json::Value) {
    start_seed(
        top,
        bind,
        "none",
        &["--torrent-out", torrent.to_str().unwrap()],
    )
}

/// `fetch TORRENT --output OUT --peer PEER [extra]` that must succeed; its JSON report.
fn fetch_ok(
    torrent: &Path,
    out: &Path,
    bind: &str,
    peers: &[&str],
    extra: &[&str],
) -> serde_json::Value {
    let mut more: Vec<&str> = Vec::new();
    for p in peers {
        more.extend(["--peer", p]);
    }
    more.extend_from_slice(extra);
    let a = fetch_args(torrent.to_str().unwrap(), out, bind, "none", &more);
    let (code, stdout, stderr) = run_dhtnode(&a, FETCH_TIMEOUT);
    assert_eq!(
        code, 0,
        "fetch {a:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    let r = json(stdout.lines().last().expect("a JSON report"));
    eprintln!("fetch {extra:?}: {r}");
    r
}

fn n(r: &serde_json::Value, key: &str) -> u64 {
    r[key]
        .as_u64()
        .unwrap_or_else(|| panic!("report lacks {key}: {r}"))
}

/// Sets a file's mtime (and atime) back to `t` (as `touch -d` would).
fn set_mtime(path: &Path, t: &std::fs::Metadata) {
    use std::os::unix::fs::MetadataExt;
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let times = [
        libc::timespec {
            tv_sec: t.atime(),
            tv_nsec: t.atime_nsec(),
        },
        libc::timespec {
            tv_sec: t.mtime(),
            tv_nsec: t.mtime_nsec(),
        },
    ];
    // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat requires.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) };
    assert_eq!(rc, 0, "utimensat {}", path.display());
}

#[test]
fn deleted_truncated_and_overwritten_files_are_repaired_fetching_only_damaged_pieces() {
    let net = "127.140.0";
    let tmp = tempfile::tempdir().unwrap();
    let top = source_tree(&tmp.path().join("src"), 140);
    let torrent = tmp.path().join("t.torrent");
    let (seed, info) = seed_tree(&top, &format!("{net}.200:7000"), &torrent);
    let mi = Metainfo::read_file(&torrent).unwrap();
    let pieces = mi.info.num_pieces() as u64;
    assert_eq!(n(&info, "pieces"), pieces);
    let layout = Layout::new(
        mi.info.piece_length,
        &mi.info.files.iter().map(|f| f.length).collect::<Vec<_>>(),
    )
    .unwrap();
    let src_stream = stream_as_fetch_sees_it(&mi, top.parent().unwrap());
    let peer = format!("{net}.200:7000");
    let out = tmp.path().join("out");
    let fetched_tree = out.join("tree");

    let r = fetch_ok(&torrent, &out, &format!("{net}.201:0"), &[&peer], &[]);
    assert_eq!(n(&r, "pieces_fetched"), pieces, "{r}");
    assert_eq!(
        n(&r, "pieces_checked"),
        0,
        "a fresh download hashes nothing: {r}"
    );
    assert_same_tree(&top, &fetched_tree);

    // Nothing changed: everything is trusted, nothing read or fetched.
    let r = fetch_ok(&torrent, &out, &format!("{net}.202:0"), &[&peer], &[]);
    assert_eq!(
        (
            n(&r, "pieces_resumed"),
            n(&r, "pieces_checked"),
            n(&r, "pieces_fetched")
        ),
        (pieces, 0, 0),
        "{r}"
    );

    // Damage: delete a.bin, truncate b.bin, overwrite 3000 bytes in the middle of c.bin.
    std::fs::remove_file(fetched_tree.join("a.bin")).unwrap();
    let b = std::fs::OpenOptions::new()
        .write(true)
        .open(fetched_tree.join("b.bin"))
        .unwrap();
    b.set_len(500 * 1024 + 9).unwrap();
    drop(b);
    let c = std::fs::OpenOptions::new()
        .write(true)
        .open(fetched_tree.join("c.bin"))
        .unwrap();
    let mut junk = random_bytes(3000, 9999);
    let orig_c = std::fs::read(top.join("c.bin")).unwrap();
    for (j, x) in junk.iter_mut().enumerate() {
        if *x == orig_c[400_000 + j] {
            *x ^= 0xff;
        }
    }
    c.write_all_at(&junk, 400_000).unwrap();
    drop(c);
    let damaged = damaged_pieces(&mi, &src_stream, &out);
    // The pieces of the deleted file, of b.bin past its new end, and of c.bin's 3000 bytes.
    let a_pieces = layout.pieces_of_file(0).unwrap();
    assert!(
        damaged.len() as u32 > a_pieces.len() as u32 + 2,
        "{damaged:?}"
    );
    assert!((damaged.len() as u64) < pieces, "{damaged:?}");

    let r = fetch_ok(&torrent, &out, &format!("{net}.203:0"), &[&peer], &[]);
    assert_same_tree(&top, &fetched_tree);
    assert_eq!(
        n(&r, "pieces_fetched"),
        damaged.len() as u64,
        "exactly the damaged pieces {damaged:?} are fetched: {r}"
    );
    assert_eq!(
        n(&r, "pieces_resumed"),
        pieces - damaged.len() as u64,
        "{r}"
    );
    // Only the pieces with bytes in changed files that were there are hashed: none of the
    // deleted file's own pieces, none wholly past b.bin's new end.
    let checked = n(&r, "pieces_checked");
    assert!(checked > 0 && checked < pieces, "{r}");

    // A flipped byte behind the same size and a restored mtime: only --recheck finds it.
    let victim = fetched_tree.join("b.bin");
    let before = std::fs::metadata(&victim).unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&victim)
        .unwrap();
    let mut byte = [0u8; 1];
    std::fs::File::open(&victim)
        .unwrap()
        .read_exact_at(&mut byte, 777_777)
        .unwrap();
    f.write_all_at(&[byte[0] ^ 0x20], 777_777).unwrap();
    f.sync_all().unwrap();
    drop(f);
    set_mtime(&victim, &before);
    assert_eq!(damaged_pieces(&mi, &src_stream, &out).len(), 1);
    let r = fetch_ok(
        &torrent,
        &out,
        &format!("{net}.204:0"),
        &[&peer],
        &["--recheck"],
    );
    assert_eq!(
        (
            n(&r, "pieces_checked"),
            n(&r, "pieces_fetched"),
            n(&r, "pieces_resumed")
        ),
        (pieces, 1, pieces - 1),
        "--recheck hashes every piece and fetches the flipped one: {r}"
    );
    assert_same_tree(&top, &fetched_tree);
    drop(seed);
}

#[test]
fn fetch_over_copied_data_checks_it_and_downloads_nothing() {
    let net = "127.140.1";
    let tmp = tempfile::tempdir().unwrap();
    let top = source_tree(&tmp.path().join("src"), 141);
    let torrent = tmp.path().join("t.torrent");
    let (seed, info) = seed_tree(&top, &format!("{net}.200:7000"), &torrent);
    let pieces = n(&info, "pieces");
    // The data arrives by other means (a copy, no resume record).
    let out = tmp.path().join("out");
    for (name, _) in FILES {
        let to = out.join("tree").join(name);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(top.join(name), &to).unwrap();
    }
    let r = fetch_ok(
        &torrent,
        &out,
        &format!("{net}.201:0"),
        &[&format!("{net}.200:7000")],
        &[],
    );
    assert_eq!(
        (
            n(&r, "pieces_checked"),
            n(&r, "pieces_fetched"),
            n(&r, "pieces_resumed")
        ),
        (pieces, 0, pieces),
        "{r}"
    );
    assert_same_tree(&top, &out.join("tree"));
    drop(seed);
}

#[test]
fn seeds_of_partial_data_serve_the_pieces_they_have() {
    let net = "127.140.2";
    let tmp = tempfile::tempdir().unwrap();
    let top = source_tree(&tmp.path().join("src"), 142);
    let torrent = tmp.path().join("t.torrent");
    let (full, _) = seed_tree(&top, &format!("{net}.200:7000"), &torrent);
    drop(full);
    let mi = Metainfo::read_file(&torrent).unwrap();
    let src_stream = stream_as_fetch_sees_it(&mi, top.parent().unwrap());
    // Copy one: a.bin's start overwritten. Copy two: c.bin missing. Neither is complete; every
    // piece is good in one of them.
    let copy = |name: &str| {
        let d = tmp.path().join(name).join("tree");
        std::fs::create_dir_all(&d).unwrap();
        for (f, _) in FILES {
            std::fs::copy(top.join(f), d.join(f)).unwrap();
        }
        d
    };
    let one = copy("one");
    std::fs::File::options()
        .write(true)
        .open(one.join("a.bin"))
        .unwrap()
        .write_all_at(&vec![0u8; 100_000], 0)
        .unwrap();
    let two = copy("two");
    std::fs::remove_file(two.join("c.bin")).unwrap();
    let bad_one = damaged_pieces(&mi, &src_stream, one.parent().unwrap());
    let bad_two = damaged_pieces(&mi, &src_stream, two.parent().unwrap());
    assert!(!bad_one.is_empty() && !bad_two.is_empty());
    assert!(bad_one.iter().all(|p| !bad_two.contains(p)));
    let t = torrent.to_str().unwrap();
    let (s1, _) = start_seed(&one, &format!("{net}.210:7000"), "none", &["--torrent", t]);
    let (s2, _) = start_seed(&two, &format!("{net}.211:7000"), "none", &["--torrent", t]);
    let out = tmp.path().join("out");
    let r = fetch_ok(
        &torrent,
        &out,
        &format!("{net}.201:0"),
        &[&format!("{net}.210:7000"), &format!("{net}.211:7000")],
        &[],
    );
    assert_eq!(n(&r, "pieces_fetched"), mi.info.num_pieces() as u64, "{r}");
    assert_same_tree(&top, &out.join("tree"));
    // Data with no matching piece at all is still refused.
    let none = tmp.path().join("none").join("tree");
    std::fs::create_dir_all(&none).unwrap();
    let (code, _, stderr) = run_dhtnode(
        &common::seed_args(&none, &format!("{net}.212:7000"), "none", &["--torrent", t]),
        Duration::from_secs(30),
    );
    assert_ne!(code, 0, "seeding nothing that matches: {stderr}");
    assert!(stderr.contains("do not match"), "{stderr}");
    drop((s1, s2));
}
