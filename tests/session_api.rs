//! The library's `Session` API end to end on loopback, as an embedding program uses it: a
//! seeding session and a downloading session (no DHT: the peer is given), a download limit
//! that holds, pause (connections closed, nothing moves), resume (verified pieces are not
//! fetched again) and the events that report it.

mod common;

use std::time::{Duration, Instant};

use dhtnode::engine::Phase;
use dhtnode::session::{AddTorrent, Session, SessionConfig, TorrentEvent, TorrentSource};
use dhtnode::torrent::{build_torrent, BuildOptions};

const LIMIT: Duration = Duration::from_secs(60);

/// Waits (bounded) until `pred` holds for the torrent's progress.
async fn until(
    h: &dhtnode::session::TorrentHandle,
    what: &str,
    pred: impl Fn(&dhtnode::engine::Progress) -> bool,
) {
    let mut rx = h.progress();
    tokio::time::timeout(LIMIT, async {
        loop {
            if pred(&rx.borrow_and_update()) {
                return;
            }
            if rx.changed().await.is_err() {
                panic!("progress ended before: {what}");
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_pause_resume_through_the_session_api() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src").join("api.bin");
    let size = 8 * 1024 * 1024 + 321;
    common::files::write_random(&src, size, 113);
    let built = build_torrent(&src, &BuildOptions::default()).unwrap();
    let mi = built.metainfo;

    let seed = Session::new(SessionConfig::new("127.113.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    let seeding = seed
        .add_torrent(AddTorrent::seed(
            mi.clone(),
            src.parent().unwrap().to_path_buf(),
            true,
        ))
        .await
        .unwrap();

    // 2 MB/s for the whole downloading session.
    let rate = 2_000_000u64;
    let mut cfg = SessionConfig::new("127.113.0.2:0".parse().unwrap());
    cfg.download_limit = Some(rate);
    let client = Session::new(cfg).await.unwrap();
    let out = tmp.path().join("out");
    let mut add = AddTorrent::new(TorrentSource::Metainfo(Box::new(mi.clone())), out.clone());
    add.peers = vec![seed.listen_addr()];
    let started = Instant::now();
    let h = client.add_torrent(add).await.unwrap();
    let mut events = h.events();

    // Pause once a quarter is verified.
    until(&h, "a quarter verified", |p| {
        p.pieces_total > 0 && p.pieces_done * 4 >= p.pieces_total
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let got = h.stats().bytes_done as f64;
    // Within the limit: a 2 MB/s bucket with a quarter-second burst, 10% slack.
    assert!(
        got <= (elapsed * rate as f64 + rate as f64 / 4.0) * 1.1,
        "{got} bytes in {elapsed:.2} s at a {rate} B/s limit"
    );
    h.pause();
    until(&h, "paused", |p| p.phase == Phase::Paused && p.peers == 0).await;
    let done_at_pause = h.stats().pieces_done;
    // Paused: the seed sends nothing more. The seed publishes its counters on a 500 ms tick,
    // so a snapshot taken the moment the client paused can lag the bytes it had already
    // written; count from the first snapshot in which the seed has seen the connection go.
    until(&seeding, "the seed saw the connection close", |p| {
        p.peers == 0
    })
    .await;
    let up_before = seeding.stats().uploaded;
    let waited = Instant::now();
    until(&seeding, "two more seed progress updates", |_| {
        waited.elapsed() >= Duration::from_secs(1)
    })
    .await;
    let up_after = seeding.stats().uploaded;
    assert!(
        up_after - up_before <= 1024 * 1024,
        "the seed sent {} bytes while the download was paused",
        up_after - up_before
    );

    // Resume without the limit: it finishes, and nothing verified before is fetched again.
    client.set_download_limit(None);
    h.resume();
    let report = tokio::time::timeout(LIMIT, h.wait_done())
        .await
        .expect("no completion after resume")
        .unwrap();
    assert!(
        report.pieces_resumed >= done_at_pause,
        "{} pieces resumed, {done_at_pause} were verified at the pause",
        report.pieces_resumed
    );
    common::files::assert_same_file(&src, &out.join("api.bin"));

    // The events told the story in order.
    let mut seen = Vec::new();
    while let Ok(ev) = events.try_recv() {
        seen.push(match ev {
            TorrentEvent::Paused => "paused",
            TorrentEvent::Resumed => "resumed",
            TorrentEvent::Completed(_) => "completed",
            _ => continue,
        });
    }
    assert_eq!(seen, ["paused", "resumed", "completed"], "{seen:?}");
    client.shutdown().await;
    seed.shutdown().await;
}
