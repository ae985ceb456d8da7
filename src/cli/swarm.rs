//! Glue between the DHT and the download engine used by `fetch`, `seed` and `demo`: feeding
//! peers from lookups into the engine as they arrive, announcing ourselves periodically, and
//! showing progress.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dhtnode::engine::{Phase, Progress};
use dhtnode::id::Id;
use dhtnode::net::{DhtHandle, LookupUpdate};
use tokio::sync::{mpsc, watch};

/// How often a seeder re-announces (BEP 5 stores expire after 30 minutes).
pub const REANNOUNCE_EVERY: Duration = Duration::from_secs(15 * 60);

/// What the peer feed learnt, for the final report and the demo's story.
#[derive(Default)]
pub struct FeedStats {
    /// Microseconds from feed start to the first peer (u64::MAX = none yet).
    pub first_peer_us: AtomicU64,
    /// Lookup depth of the answer that gave the first peer (0 = unknown).
    pub first_peer_hops: AtomicU64,
    /// Nodes queried by all lookups.
    pub nodes_queried: AtomicU64,
    /// Lookups run.
    pub lookups: AtomicU64,
    /// What `first_peer_us` counts from (the start of the command).
    started: Option<Instant>,
}

impl FeedStats {
    /// A fresh record whose times count from `started` (the start of the command).
    pub fn new(started: Instant) -> Arc<FeedStats> {
        let s = FeedStats {
            started: Some(started),
            ..FeedStats::default()
        };
        s.first_peer_us.store(u64::MAX, Ordering::Relaxed);
        Arc::new(s)
    }

    /// Time to the first peer, if one came.
    pub fn first_peer(&self) -> Option<Duration> {
        match self.first_peer_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            v => Some(Duration::from_micros(v)),
        }
    }
}

/// Feeds peers to the engine: first the ones given (`--peer`, magnet `x.pe`), then whatever
/// DHT lookups find, the moment each answer arrives. Lookups repeat with growing pauses
/// (peers may announce later) and stop after `max_lookups`, closing the channel so the
/// engine can tell when it has run out of peers.
pub fn spawn_peer_feed(
    node: Option<DhtHandle>,
    info_hash: Id,
    initial: Vec<SocketAddr>,
    tx: mpsc::Sender<SocketAddr>,
    stats: Arc<FeedStats>,
    max_lookups: u32,
) {
    tokio::spawn(async move {
        let started = stats.started.unwrap_or_else(Instant::now);
        let mut sent = std::collections::HashSet::new();
        for p in initial {
            if sent.insert(p) && tx.send(p).await.is_err() {
                return;
            }
        }
        let Some(node) = node else { return };
        let mut pause = Duration::from_secs(2);
        for _ in 0..max_lookups {
            let Ok(mut stream) = node.get_peers(info_hash) else {
                return;
            };
            stats.lookups.fetch_add(1, Ordering::Relaxed);
            while let Some(u) = stream.next_update().await {
                match u {
                    LookupUpdate::Peers(ps) => {
                        for p in ps {
                            let p = SocketAddr::V4(p);
                            if !sent.insert(p) {
                                continue;
                            }
                            if stats.first_peer().is_none() {
                                let us = started.elapsed().as_micros() as u64;
                                stats.first_peer_us.store(us, Ordering::Relaxed);
                            }
                            if tx.send(p).await.is_err() {
                                return;
                            }
                        }
                    }
                    LookupUpdate::Done(s) => {
                        stats
                            .nodes_queried
                            .fetch_add(u64::from(s.stats.queried), Ordering::Relaxed);
                        if let Some(h) = s.stats.first_peer_hops {
                            let _ = stats.first_peer_hops.compare_exchange(
                                0,
                                u64::from(h),
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                        }
                        break;
                    }
                    LookupUpdate::AnnounceAcked(_) => {}
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = tx.closed() => return,
            }
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    });
}

/// Announces `port` for `info_hash` now and every [`REANNOUNCE_EVERY`]; each round reports
/// how many nodes acknowledged. Runs until the node stops.
pub fn spawn_announcer(node: DhtHandle, info_hash: Id, port: u16) {
    tokio::spawn(async move {
        loop {
            match announce_once(&node, info_hash, port).await {
                Some(acks) => {
                    tracing::info!("announced {info_hash} on port {port}: {acks} node(s) stored it")
                }
                None => return,
            }
            tokio::time::sleep(REANNOUNCE_EVERY).await;
        }
    });
}

/// One announce round: a get_peers lookup, then announce_peer to the closest nodes with their
/// tokens; waits (bounded) for acknowledgements. `None` if the node has stopped.
pub async fn announce_once(node: &DhtHandle, info_hash: Id, port: u16) -> Option<usize> {
    let mut stream = node.announce(info_hash, port).ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ack_deadline = None;
    loop {
        let until = ack_deadline.unwrap_or(deadline).min(deadline);
        match tokio::time::timeout_at(until, stream.next_update()).await {
            Ok(Some(LookupUpdate::Done(s))) => {
                if s.announced == 0 {
                    break;
                }
                ack_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
            }
            Ok(Some(LookupUpdate::AnnounceAcked(_))) => {
                let want = stream.summary().map_or(usize::MAX, |s| s.announced);
                if stream.acks().len() >= want {
                    break;
                }
            }
            Ok(Some(LookupUpdate::Peers(_))) => {}
            Ok(None) => return None,
            Err(_) => break,
        }
    }
    Some(stream.acks().len())
}

/// Shows fetch progress: an indicatif bar on a terminal, a log line every few seconds
/// otherwise. Ends when the sender is dropped.
pub fn spawn_progress(
    mut rx: watch::Receiver<Progress>,
    quiet: bool,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if quiet {
            while rx.changed().await.is_ok() {}
            return;
        }
        let tty = std::io::stderr().is_terminal();
        let bar = if tty {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg:<12} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            Some(b)
        } else {
            None
        };
        let mut last_line = Instant::now() - Duration::from_secs(10);
        while rx.changed().await.is_ok() {
            let p = rx.borrow_and_update().clone();
            let phase = match p.phase {
                Phase::FindingPeers => "finding peers",
                Phase::FetchingMetadata => "metadata",
                Phase::Downloading => "downloading",
                Phase::Finishing => "finishing",
                Phase::Done => "done",
                Phase::Seeding => "seeding",
            };
            if let Some(b) = &bar {
                b.set_length(p.bytes_total);
                b.set_position(p.bytes_done);
                b.set_message(format!("{phase} {}p", p.peers));
            } else if last_line.elapsed() >= Duration::from_secs(2) {
                last_line = Instant::now();
                let pct = if p.bytes_total > 0 {
                    100.0 * p.bytes_done as f64 / p.bytes_total as f64
                } else {
                    0.0
                };
                eprintln!(
                    "{phase}: {pct:.1}% ({}/{} pieces), {:.1} MB/s, {} peers",
                    p.pieces_done,
                    p.pieces_total,
                    p.download_rate / 1e6,
                    p.peers
                );
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
    })
}
