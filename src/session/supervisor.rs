//! The task that runs one torrent of a session: starts it on the engine, connects its peer
//! sources (given peers, the DHT feed), forwards progress and events to the handle, and
//! carries out pause / resume / remove and the seed ratio.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::add::AddTorrent;
use super::feed::{self, Feed};
use super::handle::{Ctl, DoneState, FeedStats, Inner, TorrentEvent, TorrentHandle};
use super::trackers::{self, TrackerFeed};
use super::{SessionError, Shared};
use crate::engine::{
    EngineError, FetchReport, PeerSource, Phase, Progress, RunningTorrent, StartMode, TorrentSpec,
};
use crate::id::Id;
use crate::sync::lock;
use crate::torrent::Metainfo;

/// What a download's completion says.
type EngineResult = Result<FetchReport, EngineError>;
/// Where it arrives.
type DoneRx = oneshot::Receiver<EngineResult>;

/// Events kept for slow receivers.
const EVENT_BACKLOG: usize = 64;

/// Starts `add` and its supervisor; errors that stop the torrent at once (bind, data check,
/// a metainfo for another info-hash) come back here.
pub(crate) async fn start(
    shared: Arc<Shared>,
    add: AddTorrent,
) -> Result<TorrentHandle, SessionError> {
    let info_hash = add.info_hash();
    let feed_stats = Arc::new(FeedStats::new(Instant::now()));
    let mut sup = Supervisor {
        shared,
        metainfo: add.metainfo().cloned(),
        add,
        running: None,
        progress_rx: None,
        done_rx: None,
        feed: None,
        feed_v2: None,
        trackers: None,
        stopping: Vec::new(),
        reported: false,
        meta_seen: false,
        feed_stats: Arc::clone(&feed_stats),
        events: broadcast::channel(EVENT_BACKLOG).0,
        progress: watch::channel(Progress::default()).0,
        done: watch::channel(DoneState::Pending).0,
    };
    sup.launch().await?;
    let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
    let handle = TorrentHandle {
        inner: Arc::new(Inner {
            info_hash,
            progress: sup.progress.clone(),
            events: sup.events.clone(),
            ctl: ctl_tx,
            done: sup.done.clone(),
            stopped: watch::channel(false).0,
            feed: feed_stats,
        }),
    };
    let inner = Arc::clone(&handle.inner);
    tokio::spawn(async move {
        sup.run(ctl_rx).await;
        // Let the trackers hear `stopped` (each feed bounds its own wait).
        for t in sup.stopping.drain(..) {
            let _ = t.await;
        }
        inner.stopped.send_replace(true);
        let _ = inner.events.send(TorrentEvent::Stopped);
        let mut map = lock(&sup.shared.torrents);
        if map
            .get(&inner.info_hash)
            .is_some_and(|h| Arc::ptr_eq(&h.inner, &inner))
        {
            map.remove(&inner.info_hash);
        }
    });
    Ok(handle)
}

struct Supervisor {
    shared: Arc<Shared>,
    add: AddTorrent,
    /// The metainfo once known (given, or fetched and kept across a pause).
    metainfo: Option<Metainfo>,
    running: Option<RunningTorrent>,
    /// The running torrent's progress, as this supervisor has seen it (one receiver per
    /// launch: a fresh clone would report every old value as a change).
    progress_rx: Option<watch::Receiver<Progress>>,
    /// The running download's completion, until it fires.
    done_rx: Option<DoneRx>,
    feed: Option<JoinHandle<()>>,
    /// For a BEP 52 hybrid, the DHT feed under its truncated v2 info-hash (peers of the v2
    /// swarm; we announce there too, and accept handshakes with that hash).
    feed_v2: Option<JoinHandle<()>>,
    /// The tracker announcer, when the torrent names trackers.
    trackers: Option<trackers::Running>,
    /// Tracker announcers told to stop, sending `stopped`.
    stopping: Vec<JoinHandle<()>>,
    /// The download's completion was reported.
    reported: bool,
    meta_seen: bool,
    feed_stats: Arc<FeedStats>,
    events: broadcast::Sender<TorrentEvent>,
    progress: watch::Sender<Progress>,
    done: watch::Sender<DoneState>,
}

impl Supervisor {
    fn spec(&self) -> TorrentSpec {
        let seeding = self.add.is_seed() || self.reported;
        let mode = match (&self.add.seed_existing, seeding) {
            (Some(s), _) => StartMode::Seed { verify: s.verify },
            // Resumed after completion: the data is known good (the record says so).
            (None, true) => StartMode::Download { seed_after: true },
            (None, false) => StartMode::Download {
                seed_after: self.add.seed_after || self.add.seed_ratio.is_some(),
            },
        };
        TorrentSpec {
            metainfo: self.metainfo.clone(),
            mode,
            dht_nodes: self.shared.dht_nodes.clone(),
            recheck: self.add.recheck,
            files: self.add.files.clone(),
            metadata_only: self.add.metadata_only,
            ..TorrentSpec::download(self.add.info_hash(), self.add.output_dir.clone())
        }
    }

    /// Starts the engine torrent and its peer sources.
    async fn launch(&mut self) -> Result<(), EngineError> {
        let mut running = self.shared.listener.start(self.spec()).await?;
        for p in self.add.initial_peers() {
            let _ = running.peers.try_send((p, PeerSource::Manual));
        }
        if let Some(dht) = self.shared.dht.clone().filter(|_| !self.add.is_private()) {
            let v2 = self
                .metainfo
                .as_ref()
                .or(self.add.metainfo())
                .and_then(Metainfo::info_hash_v2_truncated);
            let feed_for = |info_hash: Id| {
                feed::spawn(Feed {
                    dht: dht.clone(),
                    info_hash,
                    port: self.shared.listener.local_addr().port(),
                    port6: self.shared.listener.local_addr6().map(|a| a.port()),
                    peers: running.peers.clone(),
                    progress: running.progress.clone(),
                    stats: Arc::clone(&self.feed_stats),
                    schedule: self.shared.schedule.clone(),
                    events: self.events.clone(),
                })
            };
            self.feed_v2 = v2.map(feed_for);
            self.feed = Some(feed_for(self.add.info_hash()));
        }
        let tiers =
            crate::tracker::Tiers::from_strings(&self.add.tracker_tiers(), &mut rand::thread_rng());
        if !tiers.is_empty() {
            self.stopping.retain(|t| !t.is_finished());
            self.trackers = Some(trackers::spawn(TrackerFeed {
                tiers,
                info_hash: self.add.info_hash(),
                peer_id: self.shared.peer_id,
                listen: self.shared.listener.local_addr(),
                peers: running.peers.clone(),
                progress: running.progress.clone(),
                stats: Arc::clone(&self.feed_stats),
                config: self.shared.trackers,
                enough_peers: self.shared.schedule.enough_peers,
                seeding: self.add.is_seed() || self.reported,
            }));
        }
        if self.feed.is_none() && self.trackers.is_none() {
            // No source will send more addresses: the engine may then tell "out of peers"
            // once every known address (given, PEX, incoming) has failed for good.
            running.close_peer_sources();
        }
        self.progress_rx = Some(running.progress.clone());
        self.done_rx = running.done.take();
        self.running = Some(running);
        Ok(())
    }

    fn halt(&mut self) {
        if let Some(f) = self.feed.take() {
            f.abort();
        }
        if let Some(f) = self.feed_v2.take() {
            f.abort();
        }
        if let Some(t) = self.trackers.take() {
            self.stopping.push(t.stop());
        }
        if let Some(r) = self.running.take() {
            if self.metainfo.is_none() {
                self.metainfo = r
                    .info_bytes()
                    .and_then(|b| Metainfo::from_info_bytes(&b).ok());
            }
            r.stop();
        }
        self.progress_rx = None;
        self.done_rx = None;
    }

    fn fail(&mut self, why: String) {
        tracing::warn!(info_hash = %self.add.info_hash(), "torrent failed: {why}");
        self.done.send_replace(DoneState::Failed(why.clone()));
        let _ = self.events.send(TorrentEvent::Failed(why));
        self.halt();
    }

    fn on_done(&mut self, report: FetchReport) -> bool {
        self.reported = true;
        self.done.send_replace(DoneState::Done(report.clone()));
        let _ = self.events.send(TorrentEvent::Completed(report));
        // Without seeding, the torrent ends here.
        self.add.seed_after || self.add.seed_ratio.is_some()
    }

    /// True once the seed ratio is reached (and the torrent should stop).
    fn ratio_reached(&self) -> bool {
        let (Some(ratio), Some(r)) = (self.add.seed_ratio, self.running.as_ref()) else {
            return false;
        };
        if self.add.seed_after || !self.reported {
            return false;
        }
        let size = r.size().unwrap_or(0);
        size > 0 && r.uploaded() as f64 >= ratio * size as f64
    }

    async fn run(&mut self, mut ctl: mpsc::UnboundedReceiver<Ctl>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            let running = self.running.is_some();
            tokio::select! {
                c = ctl.recv() => match c {
                    Some(Ctl::Pause) if running => {
                        self.halt();
                        let mut p = self.progress.borrow().clone();
                        p.phase = Phase::Paused;
                        p.peers = 0;
                        self.progress.send_replace(p);
                        let _ = self.events.send(TorrentEvent::Paused);
                    }
                    Some(Ctl::Resume) if !running => match self.launch().await {
                        Ok(()) => {
                            let _ = self.events.send(TorrentEvent::Resumed);
                        }
                        Err(e) => {
                            self.fail(crate::error_text::error_chain(&e));
                            return;
                        }
                    },
                    Some(Ctl::Pause | Ctl::Resume) => {}
                    Some(Ctl::Remove) | None => {
                        self.halt();
                        return;
                    }
                },
                r = recv_done(&mut self.done_rx), if self.done_rx.is_some() => {
                    self.done_rx = None;
                    match r {
                        Ok(Ok(report)) => {
                            if !self.on_done(report) {
                                self.halt();
                                return;
                            }
                        }
                        Ok(Err(EngineError::Cancelled)) | Err(_) => {
                            // Stopped from outside (the listener shut down): nothing runs.
                            if self.running.as_ref().is_some_and(RunningTorrent::is_stopped) {
                                self.halt();
                            }
                        }
                        Ok(Err(e)) => {
                            self.fail(crate::error_text::error_chain(&e));
                            return;
                        }
                    }
                }
                r = progress_changed(&mut self.progress_rx), if self.progress_rx.is_some() => {
                    if r.is_ok() {
                        self.forward_progress();
                    } else {
                        // The engine torrent ended on its own: after completion that is the
                        // end of seeding; otherwise `done` reports why.
                        self.progress_rx = None;
                        if self.reported {
                            self.halt();
                            return;
                        }
                    }
                }
                _ = tick.tick() => {
                    if self.ratio_reached() {
                        let uploaded = self.running.as_ref().map_or(0, RunningTorrent::uploaded);
                        let _ = self.events.send(TorrentEvent::SeedRatioReached { uploaded });
                        self.halt();
                        return;
                    }
                }
            }
        }
    }

    fn forward_progress(&mut self) {
        let Some(rx) = self.progress_rx.as_mut() else {
            return;
        };
        let p = rx.borrow_and_update().clone();
        if !self.meta_seen && p.bytes_total > 0 {
            self.meta_seen = true;
            let _ = self.events.send(TorrentEvent::MetadataReceived {
                name: p.name.clone().unwrap_or_default(),
                bytes: p.bytes_total,
            });
        }
        self.progress.send_replace(p);
    }
}

/// Waits for a download's completion (never, when there is none).
async fn recv_done(rx: &mut Option<DoneRx>) -> Result<EngineResult, oneshot::error::RecvError> {
    match rx {
        Some(d) => d.await,
        None => std::future::pending().await,
    }
}

/// Waits for the next progress update (never, when nothing runs).
async fn progress_changed(
    rx: &mut Option<watch::Receiver<Progress>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(r) => r.changed().await,
        None => std::future::pending().await,
    }
}
