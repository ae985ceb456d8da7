//! A handle on one torrent of a session: its live progress, a stream of events, the final
//! report, and pause / resume / remove.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, watch};

use super::SessionError;
use crate::engine::{FetchReport, Progress};
use crate::id::Id;

/// Something that happened to a torrent, in order. Slow receivers lose the oldest events
/// (a bounded broadcast), never the torrent's progress, which is on [`TorrentHandle::progress`].
#[derive(Clone, Debug)]
pub enum TorrentEvent {
    /// The info dictionary is known (from the `.torrent` or fetched from peers).
    MetadataReceived {
        /// Torrent name.
        name: String,
        /// Total size in bytes.
        bytes: u64,
    },
    /// A DHT announce round finished; this many nodes stored our address.
    Announced {
        /// Nodes that acknowledged.
        nodes: usize,
    },
    /// Every piece is verified and durable.
    Completed(FetchReport),
    /// Seeding stopped because the seed ratio was reached.
    SeedRatioReached {
        /// Bytes uploaded.
        uploaded: u64,
    },
    /// Paused by [`TorrentHandle::pause`].
    Paused,
    /// Resumed by [`TorrentHandle::resume`].
    Resumed,
    /// The torrent failed as a whole (single peers failing are not reported).
    Failed(String),
    /// The torrent stopped for good (removed, finished without seeding, or failed).
    Stopped,
}

/// Requests from a handle to the torrent's supervisor.
#[derive(Debug)]
pub(crate) enum Ctl {
    Pause,
    Resume,
    Remove,
}

/// Where a download stands, for [`TorrentHandle::wait_done`].
#[derive(Clone, Debug, Default)]
pub(crate) enum DoneState {
    #[default]
    Pending,
    Done(FetchReport),
    Failed(String),
}

/// What the DHT peer feed learnt, for reports and the demo's story.
#[derive(Debug)]
pub struct FeedStats {
    started: Instant,
    first_peer_us: AtomicU64,
    first_peer_hops: AtomicU64,
    nodes_queried: AtomicU64,
    lookups: AtomicU64,
}

impl FeedStats {
    pub(crate) fn new(started: Instant) -> FeedStats {
        FeedStats {
            started,
            first_peer_us: AtomicU64::new(u64::MAX),
            first_peer_hops: AtomicU64::new(0),
            nodes_queried: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        }
    }

    /// Time from adding the torrent to the first peer a DHT lookup gave.
    pub fn first_peer(&self) -> Option<Duration> {
        match self.first_peer_us.load(Ordering::Relaxed) {
            u64::MAX => None,
            v => Some(Duration::from_micros(v)),
        }
    }

    /// Lookup depth of the answer that gave the first peer (0 = unknown).
    pub fn first_peer_hops(&self) -> u64 {
        self.first_peer_hops.load(Ordering::Relaxed)
    }

    /// Nodes queried by all lookups so far.
    pub fn nodes_queried(&self) -> u64 {
        self.nodes_queried.load(Ordering::Relaxed)
    }

    /// Lookups (and announces) run so far.
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    pub(crate) fn saw_peer(&self) {
        if self.first_peer().is_none() {
            let us = self.started.elapsed().as_micros() as u64;
            let _ = self.first_peer_us.compare_exchange(
                u64::MAX,
                us,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    pub(crate) fn lookup_done(&self, queried: u32, first_peer_hops: Option<u8>) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        self.nodes_queried
            .fetch_add(u64::from(queried), Ordering::Relaxed);
        if let Some(h) = first_peer_hops {
            let _ = self.first_peer_hops.compare_exchange(
                0,
                u64::from(h),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }
}

pub(crate) struct Inner {
    pub(crate) info_hash: Id,
    pub(crate) progress: watch::Sender<Progress>,
    pub(crate) events: broadcast::Sender<TorrentEvent>,
    pub(crate) ctl: mpsc::UnboundedSender<Ctl>,
    pub(crate) done: watch::Sender<DoneState>,
    pub(crate) stopped: watch::Sender<bool>,
    pub(crate) feed: Arc<FeedStats>,
}

/// One torrent of a session. Cheap to clone; dropping handles does not stop the torrent.
#[derive(Clone)]
pub struct TorrentHandle {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for TorrentHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TorrentHandle")
            .field("info_hash", &self.inner.info_hash)
            .field("phase", &self.inner.progress.borrow().phase)
            .finish()
    }
}

impl TorrentHandle {
    /// The info-hash.
    pub fn info_hash(&self) -> Id {
        self.inner.info_hash
    }

    /// Live progress: `changed().await` wakes on every update (about twice a second).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.inner.progress.subscribe()
    }

    /// A snapshot of the progress and counters right now.
    pub fn stats(&self) -> Progress {
        self.inner.progress.borrow().clone()
    }

    /// Events from now on.
    pub fn events(&self) -> broadcast::Receiver<TorrentEvent> {
        self.inner.events.subscribe()
    }

    /// What the DHT peer feed has done for this torrent.
    pub fn feed_stats(&self) -> &FeedStats {
        &self.inner.feed
    }

    /// Waits until every piece is verified and durable, and returns the report (or why the
    /// download failed). Resolves at once if that already happened.
    pub async fn wait_done(&self) -> Result<FetchReport, SessionError> {
        let mut rx = self.inner.done.subscribe();
        loop {
            match rx.borrow_and_update().clone() {
                DoneState::Done(r) => return Ok(r),
                DoneState::Failed(e) => return Err(SessionError::Failed(e)),
                DoneState::Pending => {}
            }
            if rx.changed().await.is_err() {
                return Err(SessionError::Closed);
            }
        }
    }

    /// Waits until the torrent has stopped for good (removed, finished, failed).
    pub async fn stopped(&self) {
        let mut rx = self.inner.stopped.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Closes every connection and stops dialing and announcing; verified pieces are kept.
    pub fn pause(&self) {
        let _ = self.inner.ctl.send(Ctl::Pause);
    }

    /// Starts again after [`TorrentHandle::pause`], resuming from the verified pieces.
    pub fn resume(&self) {
        let _ = self.inner.ctl.send(Ctl::Resume);
    }

    /// Stops the torrent for good (files stay on disk).
    pub fn remove(&self) {
        let _ = self.inner.ctl.send(Ctl::Remove);
    }
}
