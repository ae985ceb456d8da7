//! Engine integration tests on 127.0.0.1 (port 0), each bounded by a timeout.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::torrent::Corruptor;
use super::*;
use crate::id::Id;
use crate::torrent::{Metainfo, OpenMode, ResumeFile, Storage};
use crate::wire::{encode, ExtensionHandshake, Handshake, Message};

pub(super) const LIMIT: Duration = Duration::from_secs(20);

pub(super) fn cfg() -> EngineConfig {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    EngineConfig {
        resume_flush_interval: Duration::from_millis(100),
        reconnect_delay: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        ..EngineConfig::default()
    }
}

pub(super) fn pid(n: u8) -> Id {
    let mut id = Id([n; 20]);
    id.0[..8].copy_from_slice(b"-DN0100-");
    id
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{}:", s.len()).as_bytes());
    out.extend_from_slice(s);
}

fn put_int(out: &mut Vec<u8>, i: u64) {
    out.extend_from_slice(format!("i{i}e").as_bytes());
}

/// Writes pseudo-random files under `root` and returns the torrent describing them.
/// One file → single-file torrent named `name`; several → directory `name` with those files.
pub(super) fn make_torrent(
    root: &Path,
    name: &str,
    files: &[(&str, usize)],
    piece_len: usize,
    seed: u64,
) -> Metainfo {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut all = Vec::new();
    let single = files.len() == 1;
    for (fname, len) in files {
        let mut data = vec![0u8; *len];
        rng.fill_bytes(&mut data);
        let path = if single {
            root.join(name)
        } else {
            root.join(name).join(fname)
        };
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &data).unwrap();
        all.extend_from_slice(&data);
    }
    let mut pieces = Vec::new();
    for chunk in all.chunks(piece_len) {
        pieces.extend_from_slice(&Sha1::digest(chunk));
    }
    let mut info = b"d".to_vec();
    if single {
        put_str(&mut info, b"length");
        put_int(&mut info, all.len() as u64);
    } else {
        put_str(&mut info, b"files");
        info.push(b'l');
        for (fname, len) in files {
            info.push(b'd');
            put_str(&mut info, b"length");
            put_int(&mut info, *len as u64);
            put_str(&mut info, b"path");
            info.push(b'l');
            put_str(&mut info, fname.as_bytes());
            info.push(b'e');
            info.push(b'e');
        }
        info.push(b'e');
    }
    put_str(&mut info, b"name");
    put_str(&mut info, name.as_bytes());
    put_str(&mut info, b"piece length");
    put_int(&mut info, piece_len as u64);
    put_str(&mut info, b"pieces");
    put_str(&mut info, &pieces);
    info.push(b'e');
    Metainfo::from_info_bytes(&info).unwrap()
}

/// A listener on its own loopback IP (bans are per IP: peers in one test need distinct IPs).
pub(super) async fn listener(ip_last: u8, config: EngineConfig) -> Listener {
    let mut lc = ListenerConfig::new(pid(ip_last));
    lc.engine = config;
    Listener::bind(format!("127.0.0.{ip_last}:0").parse().unwrap(), lc)
        .await
        .unwrap()
}

/// A seeder of `mi` on 127.0.0.`n`.
pub(super) struct TestSeed {
    listener: Listener,
    rt: RunningTorrent,
}

impl TestSeed {
    pub(super) fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }
    pub(super) fn shutdown(&self) {
        self.listener.shutdown();
    }
    pub(super) fn uploaded(&self) -> u64 {
        self.rt.uploaded()
    }
}

pub(super) async fn start_seeder(
    mi: &Metainfo,
    dir: &Path,
    n: u8,
    corrupt: Option<Corruptor>,
) -> TestSeed {
    let listener = listener(n, cfg()).await;
    let mut spec = TorrentSpec::seed(mi.clone(), dir.to_path_buf(), true);
    spec.corrupt = corrupt;
    let rt = listener.start(spec).await.unwrap();
    TestSeed { listener, rt }
}

/// What a test fetch ends with.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) report: FetchReport,
}

/// Starts a download on 127.0.0.`ip_last`; returns the listener, the torrent and its
/// completion.
pub(super) async fn start_fetch(
    ih: Id,
    mi: Option<Metainfo>,
    out: &Path,
    ip_last: u8,
    config: EngineConfig,
    seed_after: bool,
) -> (
    Listener,
    RunningTorrent,
    tokio::sync::oneshot::Receiver<Result<FetchReport, EngineError>>,
) {
    let l = listener(ip_last, config).await;
    let mut spec = TorrentSpec::download(ih, out.to_path_buf());
    spec.metainfo = mi;
    spec.mode = StartMode::Download { seed_after };
    let mut rt = l.start(spec).await.unwrap();
    let done = rt.done.take().unwrap();
    (l, rt, done)
}

pub(super) async fn run_fetch(
    ih: Id,
    mi: Option<Metainfo>,
    out: &Path,
    addrs: &[SocketAddr],
    config: EngineConfig,
) -> Result<Outcome, EngineError> {
    let (l, mut rt, done) = start_fetch(ih, mi, out, 200, config, false).await;
    for a in addrs {
        rt.peers.send((*a, PeerSource::Manual)).await.unwrap();
    }
    // No more peers will come (the test's only source).
    rt.close_peer_sources();
    let r = tokio::time::timeout(LIMIT, done)
        .await
        .expect("fetch timed out")
        .map_err(|_| EngineError::Internal("no report".into()))?;
    l.shutdown();
    Ok(Outcome { report: r? })
}

pub(super) fn same_tree(a: &Path, b: &Path, mi: &Metainfo) {
    for f in &mi.info.files {
        let rel: PathBuf = f.path.to_path_buf();
        let x = std::fs::read(a.join(&rel)).unwrap();
        let y = std::fs::read(b.join(&rel)).unwrap();
        assert_eq!(x.len(), y.len(), "{rel:?}");
        assert!(x == y, "{rel:?} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_file_with_metainfo() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(
        src.path(),
        "file.bin",
        &[("x", 3 * 1024 * 1024 + 12345)],
        256 * 1024,
        1,
    );
    let seeder = start_seeder(&mi, src.path(), 1, None).await;
    let out = run_fetch(
        mi.info_hash,
        Some(mi.clone()),
        dst.path(),
        &[seeder.local_addr()],
        cfg(),
    )
    .await
    .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    let r = out.report;
    assert_eq!(r.pieces, mi.info.pieces.len() as u32);
    assert_eq!(r.fetched_bytes, mi.info.total_length());
    assert_eq!(r.hash_failures, 0);
    // The resume record lists every piece; a second run downloads nothing.
    let again = run_fetch(mi.info_hash, Some(mi.clone()), dst.path(), &[], cfg())
        .await
        .unwrap();
    assert_eq!(again.report.pieces_resumed, r.pieces);
    assert_eq!(again.report.fetched_bytes, 0);
    seeder.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_file_by_info_hash_only() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    // Files that straddle piece boundaries, including an empty one.
    let files = [
        ("a.bin", 100_000),
        ("empty", 0),
        ("b.bin", 700_001),
        ("c.bin", 16_384),
        ("d.bin", 1_234_567),
    ];
    let mi = make_torrent(src.path(), "dir", &files, 64 * 1024, 2);
    let s1 = start_seeder(&mi, src.path(), 1, None).await;
    let s2 = start_seeder(&mi, src.path(), 2, None).await;
    let out = run_fetch(
        mi.info_hash,
        None,
        dst.path(),
        &[s1.local_addr(), s2.local_addr()],
        cfg(),
    )
    .await
    .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert!(out.report.metadata.is_some());
    assert_eq!(out.report.name, "dir");
    s1.shutdown();
    s2.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_peer_is_banned_and_download_completes() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(
        src.path(),
        "lie.bin",
        &[("x", 4 * 1024 * 1024)],
        64 * 1024,
        3,
    );
    let liar = start_seeder(
        &mi,
        src.path(),
        9,
        Some(Arc::new(|p: u32| p.is_multiple_of(2))),
    )
    .await;
    let h1 = start_seeder(&mi, src.path(), 1, None).await;
    let h2 = start_seeder(&mi, src.path(), 2, None).await;
    let out = run_fetch(
        mi.info_hash,
        None,
        dst.path(),
        &[liar.local_addr(), h1.local_addr(), h2.local_addr()],
        cfg(),
    )
    .await
    .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    let r = out.report;
    // The liar's first bad piece came from it alone (whole pieces per peer): banned at once.
    if r.hash_failures > 0 {
        assert!(r.peers_banned >= 1, "{r:?}");
    }
    assert!(r.peers_banned <= 1, "honest peers banned: {r:?}");
    for s in [liar, h1, h2] {
        s.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_liar_first_then_honest() {
    // The liar is the only peer at first, so it certainly serves bad pieces.
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(
        src.path(),
        "lie2.bin",
        &[("x", 2 * 1024 * 1024)],
        64 * 1024,
        4,
    );
    let liar = start_seeder(&mi, src.path(), 9, Some(Arc::new(|p: u32| p % 3 == 1))).await;
    let honest = start_seeder(&mi, src.path(), 1, None).await;
    let (l, rt, done) = start_fetch(
        mi.info_hash,
        Some(mi.clone()),
        dst.path(),
        201,
        cfg(),
        false,
    )
    .await;
    rt.peers
        .send((liar.local_addr(), PeerSource::Manual))
        .await
        .unwrap();
    let mut prx = rt.progress.clone();
    // Once pieces are flowing, add the honest peer.
    tokio::time::timeout(LIMIT, async {
        while prx.borrow_and_update().pieces_done == 0 {
            prx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    rt.peers
        .send((honest.local_addr(), PeerSource::Manual))
        .await
        .unwrap();
    let report = tokio::time::timeout(LIMIT, done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    l.shutdown();
    same_tree(src.path(), dst.path(), &mi);
    assert!(report.hash_failures >= 1, "{report:?}");
    assert_eq!(report.peers_banned, 1, "{report:?}");
    liar.shutdown();
    honest.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_skips_verified_pieces() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(
        src.path(),
        "res.bin",
        &[("x", 2 * 1024 * 1024)],
        128 * 1024,
        5,
    );
    let n = mi.info.pieces.len() as u32;
    // A previous run verified and recorded the even pieces.
    {
        let data = std::fs::read(src.path().join("res.bin")).unwrap();
        let st = Storage::open(dst.path(), &mi.info, OpenMode::Create).unwrap();
        let mut rf = ResumeFile::load(
            &ResumeFile::default_path(dst.path(), &mi.info),
            mi.info_hash,
            n,
        );
        for p in (0..n).step_by(2) {
            let chunk = data.chunks(128 * 1024).nth(p as usize).unwrap();
            let v = st.write_piece(p, chunk).unwrap();
            rf.mark_verified(v);
        }
        rf.flush(&st).unwrap();
    }
    let seeder = start_seeder(&mi, src.path(), 1, None).await;
    let out = run_fetch(
        mi.info_hash,
        None,
        dst.path(),
        &[seeder.local_addr()],
        cfg(),
    )
    .await
    .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert_eq!(out.report.pieces_resumed, n / 2);
    assert_eq!(out.report.fetched_bytes, mi.info.total_length() / 2);
    // The seeder only sent the odd pieces.
    let up = seeder.uploaded();
    assert!(
        up <= mi.info.total_length() / 2 + 256 * 1024,
        "uploaded {up}"
    );
    seeder.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_after_keeps_serving() {
    let src = tempfile::tempdir().unwrap();
    let mid = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(
        src.path(),
        "chain.bin",
        &[("x", 1024 * 1024 + 7)],
        32 * 1024,
        6,
    );
    let seeder = start_seeder(&mi, src.path(), 1, None).await;
    let (relay, rt, done) = start_fetch(mi.info_hash, None, mid.path(), 202, cfg(), true).await;
    rt.peers
        .send((seeder.local_addr(), PeerSource::Manual))
        .await
        .unwrap();
    tokio::time::timeout(LIMIT, done)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    seeder.shutdown();
    assert!(!rt.is_stopped(), "seeding after fetch");
    // A second fetcher gets everything (metadata included) from the first one only.
    let out = run_fetch(mi.info_hash, None, dst.path(), &[relay.local_addr()], cfg())
        .await
        .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert_eq!(out.report.fetched_bytes, mi.info.total_length());
    relay.shutdown();
}

pub(super) async fn raw_connect(addr: SocketAddr, ih: Id) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&Handshake::new(ih, pid(77)).to_bytes())
        .await
        .unwrap();
    let mut hs = [0u8; 68];
    s.read_exact(&mut hs).await.unwrap();
    s
}

/// Reads until the peer closes the connection (EOF or reset).
pub(super) async fn until_closed(s: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("hostile peer was not dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_dropped_without_harm() {
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let mi = make_torrent(src.path(), "h.bin", &[("x", 1024 * 1024)], 16 * 1024, 7);
    let seeder = start_seeder(&mi, src.path(), 1, None).await;
    let addr = seeder.local_addr();
    let ih = mi.info_hash;

    // Oversized length prefix.
    let mut s = raw_connect(addr, ih).await;
    s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    until_closed(&mut s).await;

    // Oversized piece message (declares 1 MiB of block data).
    let mut s = raw_connect(addr, ih).await;
    let mut m = (9u32 + 1024 * 1024).to_be_bytes().to_vec();
    m.push(7);
    s.write_all(&m).await.unwrap();
    until_closed(&mut s).await;

    // Huge metadata_size in the extension handshake.
    let mut s = raw_connect(addr, ih).await;
    let hs = ExtensionHandshake {
        metadata_size: Some(1 << 40),
        ..ExtensionHandshake::default()
    };
    let mut m = Vec::new();
    encode(
        &Message::Extended {
            ext_id: 0,
            payload: hs.encode(),
        },
        &mut m,
    );
    s.write_all(&m).await.unwrap();
    until_closed(&mut s).await;

    // Too many outstanding requests.
    let mut s = raw_connect(addr, ih).await;
    let mut m = Vec::new();
    encode(&Message::Interested, &mut m);
    s.write_all(&m).await.unwrap();
    // Wait for the unchoke (skip whatever comes first: ext handshake, bitfield).
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut len = [0u8; 4];
            s.read_exact(&mut len).await.unwrap();
            let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
            s.read_exact(&mut body).await.unwrap();
            if body.first() == Some(&1) {
                return;
            }
        }
    })
    .await
    .expect("no unchoke");
    let mut m = Vec::new();
    for i in 0..2000u32 {
        encode(
            &Message::Request(crate::wire::BlockRequest {
                index: i % 64,
                begin: 0,
                length: 16384,
            }),
            &mut m,
        );
    }
    s.write_all(&m).await.unwrap();
    until_closed(&mut s).await;

    // A hostile "seeder" advertising a huge info dictionary sits next to an honest one.
    let bad = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bad_addr = bad.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = bad.accept().await {
            tokio::spawn(async move {
                let mut hs = [0u8; 68];
                if c.read_exact(&mut hs).await.is_err() {
                    return;
                }
                let theirs = Handshake::decode(&hs).unwrap().unwrap();
                let _ = c
                    .write_all(&Handshake::new(theirs.info_hash, pid(66)).to_bytes())
                    .await;
                let mut m = Vec::new();
                let mut eh = ExtensionHandshake {
                    metadata_size: Some(u64::MAX / 2),
                    ..ExtensionHandshake::default()
                };
                eh.m.insert("ut_metadata".into(), 1);
                encode(
                    &Message::Extended {
                        ext_id: 0,
                        payload: eh.encode(),
                    },
                    &mut m,
                );
                let _ = c.write_all(&m).await;
                let mut sink = vec![0u8; 4096];
                while let Ok(n) = c.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    // The seeder survived all of that and serves an honest fetch by info-hash.
    let out = run_fetch(ih, None, dst.path(), &[bad_addr, addr], cfg())
        .await
        .unwrap();
    same_tree(src.path(), dst.path(), &mi);
    assert_eq!(out.report.fetched_bytes, mi.info.total_length());
    seeder.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_peers_is_an_error() {
    let dst = tempfile::tempdir().unwrap();
    // Nobody listens there.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut c = cfg();
    c.reconnect_attempts = 1;
    let r = run_fetch(Id([5; 20]), None, dst.path(), &[dead], c).await;
    assert!(matches!(r, Err(EngineError::OutOfPeers)), "{r:?}");
}

/// Throughput check (run with `--release -- --ignored --nocapture`): size from
/// `DHTNODE_BENCH_MB` (default 256).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_loopback() {
    let mb: usize = std::env::var("DHTNODE_BENCH_MB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    let size = mb * 1024 * 1024;
    let piece = if size >= 512 * 1024 * 1024 {
        1024 * 1024
    } else {
        256 * 1024
    };
    let mi = make_torrent(src.path(), "bench.bin", &[("x", size)], piece, 8);
    let seeder = start_seeder(&mi, src.path(), 1, None).await;
    let t0 = std::time::Instant::now();
    let out = run_fetch(
        mi.info_hash,
        None,
        dst.path(),
        &[seeder.local_addr()],
        EngineConfig::default(),
    )
    .await
    .unwrap();
    let wall = t0.elapsed();
    let r = out.report;
    println!(
        "bench: {} MiB in {:?} wall; download phase {:.1} MB/s; wall {:.1} MB/s; {:?}",
        mb,
        wall,
        r.download_mb_s(),
        size as f64 / wall.as_secs_f64() / 1e6,
        r
    );
    seeder.shutdown();
}
