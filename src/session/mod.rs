//! The library's face: a [`Session`] owns one DHT node, one TCP listener, the peer sources
//! and any number of torrents. `dhtnode fetch`, `seed` and `demo` are thin CLI over it; an
//! embedding program uses it the same way:
//!
//! ```no_run
//! # async fn demo() -> Result<(), dhtnode::session::SessionError> {
//! use dhtnode::session::{AddTorrent, Session, SessionConfig};
//! let mut cfg = SessionConfig::new("0.0.0.0:6881".parse().unwrap());
//! cfg.bootstrap = vec!["router.bittorrent.com:6881".into()];
//! let session = Session::new(cfg).await?;
//! let magnet = "magnet:?xt=urn:btih:0123456789abcdef0123456789abcdef01234567";
//! let handle = session.add_torrent(AddTorrent::parse(magnet, "downloads".into())?).await?;
//! let mut progress = handle.progress();
//! tokio::spawn(async move {
//!     while progress.changed().await.is_ok() {
//!         let p = progress.borrow().clone();
//!         println!("{}: {}/{} pieces", p.phase.name(), p.pieces_done, p.pieces_total);
//!     }
//! });
//! let report = handle.wait_done().await?;
//! println!("{} bytes in {:?}", report.bytes, report.elapsed);
//! session.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Layout: [`add`] (what to add and how), [`handle`] (the per-torrent handle, its events and
//! stats), `supervisor` (the task that runs one torrent: engine start/stop, pause/resume,
//! seed ratio), `feed` (DHT lookups on a schedule and announces), `trackers` (tracker
//! announces, the other peer source).

pub mod add;
pub mod feed;
pub mod handle;
mod supervisor;
pub mod trackers;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::mpsc;

pub use add::{AddTorrent, TorrentSource};
pub use feed::announce_once;
pub use handle::{FeedStats, TorrentEvent, TorrentHandle};
pub use trackers::TrackerConfig;

use crate::dht;
use crate::engine::{EngineConfig, EngineError, Listener, ListenerConfig, RateLimiter};
use crate::id::Id;
use crate::net::{DhtHandle, NetError, NodeOptions};
use crate::sync::lock;

/// How a session runs. Fill what you know; [`SessionConfig::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Local address: TCP for peers and UDP for the DHT, on the same port when it is free
    /// (port 0 picks one). Outgoing peer connections are made from this IP.
    pub bind: SocketAddr,
    /// IPv6 UDP address for the DHT of a dual-stack session (BEP 32); `None`: IPv4 only.
    pub bind6: Option<SocketAddr>,
    /// DHT bootstrap contacts (`host:port`). Empty: no DHT node unless `dht_always`.
    pub bootstrap: Vec<String>,
    /// Run a DHT node even with no bootstrap contacts (others may bootstrap from us).
    pub dht_always: bool,
    /// DHT core tunables.
    pub dht: dht::Config,
    /// Our peer id; a fresh random one (BEP 20 style) if `None`.
    pub peer_id: Option<Id>,
    /// Engine limits and tunables.
    pub engine: EngineConfig,
    /// Upload limit for the whole session in bytes/s (`None`: unlimited).
    pub upload_limit: Option<u64>,
    /// Download limit for the whole session in bytes/s (`None`: unlimited).
    pub download_limit: Option<u64>,
    /// Peer sources: how often DHT lookups repeat.
    pub schedule: FeedSchedule,
    /// How trackers are asked (intervals, timeouts).
    pub trackers: TrackerConfig,
}

/// When a torrent looks for peers in the DHT and announces itself. Lookups never stop while
/// the torrent downloads, so peers that join later are found.
#[derive(Clone, Debug)]
pub struct FeedSchedule {
    /// While short of peers (fewer connected than `enough_peers`), the first repeat comes
    /// after this and each next one waits twice as long, up to `short_max`.
    pub short_first: Duration,
    /// Longest pause between lookups while short of peers.
    pub short_max: Duration,
    /// Pause between lookups once there are enough peers.
    pub steady: Duration,
    /// Connected peers that count as enough.
    pub enough_peers: usize,
    /// Re-announce period (BEP 5 stores expire after 30 minutes).
    pub reannounce: Duration,
}

impl Default for FeedSchedule {
    fn default() -> Self {
        FeedSchedule {
            short_first: Duration::from_secs(2),
            short_max: Duration::from_secs(30),
            steady: Duration::from_secs(300),
            enough_peers: 8,
            reannounce: Duration::from_secs(15 * 60),
        }
    }
}

impl SessionConfig {
    /// Defaults: no DHT bootstrap contacts (so no DHT), default engine, no limits.
    pub fn new(bind: SocketAddr) -> SessionConfig {
        SessionConfig {
            bind,
            bind6: None,
            bootstrap: Vec::new(),
            dht_always: false,
            dht: dht::Config::default(),
            peer_id: None,
            engine: EngineConfig::default(),
            upload_limit: None,
            download_limit: None,
            schedule: FeedSchedule::default(),
            trackers: TrackerConfig::default(),
        }
    }
}

/// Why a session call failed.
#[derive(Debug, Error)]
pub enum SessionError {
    /// The DHT node could not start.
    #[error("starting the DHT node: {0}")]
    Dht(#[from] NetError),
    /// The engine refused or failed (bind, storage, metadata, ...).
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The argument does not name a torrent (bad info-hash, magnet or `.torrent`).
    #[error("{0}")]
    BadTorrent(String),
    /// The torrent is already in this session.
    #[error("torrent {0} is already in the session")]
    Duplicate(Id),
    /// No way to find peers: no DHT, no tracker and no peers given.
    #[error("no way to find peers: give DHT bootstrap nodes, trackers or peer addresses")]
    NoPeerSource,
    /// The download failed as a whole (e.g. out of peers, disk error).
    #[error("{0}")]
    Failed(String),
    /// The session or torrent was shut down.
    #[error("the session was shut down")]
    Closed,
}

pub(crate) struct Shared {
    pub(crate) dht: Option<DhtHandle>,
    pub(crate) listener: Listener,
    pub(crate) schedule: FeedSchedule,
    pub(crate) trackers: TrackerConfig,
    /// Our peer id (announced to trackers).
    pub(crate) peer_id: Id,
    pub(crate) upload_limit: RateLimiter,
    pub(crate) download_limit: RateLimiter,
    /// DHT contacts learnt from peers' PORT messages, on their way into the routing table.
    pub(crate) dht_nodes: Option<mpsc::UnboundedSender<SocketAddr>>,
    pub(crate) torrents: Mutex<HashMap<Id, TorrentHandle>>,
}

/// A running BitTorrent node: DHT, listener, torrents. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("listen", &self.shared.listener.local_addr())
            .field("dht", &self.shared.dht.as_ref().map(DhtHandle::local_addr))
            .finish()
    }
}

/// A snapshot of the whole session.
#[derive(Clone, Debug, Default)]
pub struct SessionStats {
    /// Torrents in the session.
    pub torrents: usize,
    /// Payload bytes uploaded by all torrents (since each last started).
    pub uploaded: u64,
    /// Payload bytes received by all torrents (since each last started).
    pub downloaded: u64,
    /// Nodes in the DHT routing table (0 without a DHT).
    pub dht_nodes: usize,
}

impl Session {
    /// Starts the DHT node (when there are bootstrap contacts) and the listener.
    pub async fn new(cfg: SessionConfig) -> Result<Session, SessionError> {
        let peer_id = cfg
            .peer_id
            .unwrap_or_else(|| crate::wire::generate_peer_id(&mut rand::thread_rng()));
        let dht = if cfg.bootstrap.is_empty() && !cfg.dht_always {
            None
        } else {
            Some(
                DhtHandle::spawn(NodeOptions {
                    bind: cfg.bind,
                    bind6: cfg.bind6,
                    bootstrap: cfg.bootstrap.clone(),
                    join: true,
                    dht: cfg.dht.clone(),
                    ..NodeOptions::default()
                })
                .await?,
            )
        };
        let upload_limit = RateLimiter::new(cfg.upload_limit);
        let download_limit = RateLimiter::new(cfg.download_limit);
        let lcfg = ListenerConfig {
            peer_id,
            dht_port: dht.as_ref().map(|d| d.local_addr().port()),
            engine: cfg.engine.clone(),
            upload_limit: upload_limit.clone(),
            download_limit: download_limit.clone(),
        };
        // TCP on the DHT's port number when it is free (peers expect one port), else any;
        // with an IPv6 bind (BEP 32) a second, IPv6-only listener beside the IPv4 one, on
        // the IPv6 DHT socket's port number when it is free.
        let dht6_port = dht.as_ref().and_then(|d| d.local_addr6()).map(|a| a.port());
        let want6 = cfg.bind6.map(|b6| match (dht6_port, b6.port()) {
            (Some(p), 0) => (SocketAddr::new(b6.ip(), p), Some(b6)),
            _ => (b6, None),
        });
        let want4 = match (&dht, cfg.bind.port()) {
            (Some(d), 0) => (
                SocketAddr::new(cfg.bind.ip(), d.local_addr().port()),
                Some(cfg.bind),
            ),
            _ => (cfg.bind, None),
        };
        let listener = match Listener::bind_dual(want4.0, want6.map(|w| w.0), lcfg.clone()).await {
            Ok(l) => l,
            // The preferred port numbers were taken: any free ones.
            Err(e) if want4.1.is_some() || want6.is_some_and(|w| w.1.is_some()) => {
                tracing::debug!(error = %e, "listening on the DHT's port numbers failed");
                let fallback6 = want6.map(|(a, any)| any.unwrap_or(a));
                Listener::bind_dual(want4.1.unwrap_or(want4.0), fallback6, lcfg).await?
            }
            Err(e) => return Err(e.into()),
        };
        let dht_nodes = dht.clone().map(|d| {
            let (tx, mut rx) = mpsc::unbounded_channel::<SocketAddr>();
            tokio::spawn(async move {
                while let Some(a) = rx.recv().await {
                    if d.add_node(a).is_err() {
                        return;
                    }
                }
            });
            tx
        });
        Ok(Session {
            shared: Arc::new(Shared {
                dht,
                dht_nodes,
                listener,
                schedule: cfg.schedule,
                trackers: cfg.trackers,
                peer_id,
                upload_limit,
                download_limit,
                torrents: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The TCP address peers reach us at (announced into the DHT).
    pub fn listen_addr(&self) -> SocketAddr {
        self.shared.listener.local_addr()
    }

    /// The IPv6 TCP listen address of a dual-stack session (an IPv6 `bind6`), announced in
    /// the IPv6 DHT; `None` when the session listens on IPv4 only.
    pub fn listen_addr6(&self) -> Option<SocketAddr> {
        self.shared.listener.local_addr6()
    }

    /// The DHT node, if the session runs one.
    pub fn dht(&self) -> Option<&DhtHandle> {
        self.shared.dht.as_ref()
    }

    /// The IP we listen on (outgoing connections come from it too).
    pub fn ip(&self) -> IpAddr {
        self.listen_addr().ip()
    }

    /// Adds a torrent and starts it: download (with or without seeding afterwards) or seed.
    pub async fn add_torrent(&self, add: AddTorrent) -> Result<TorrentHandle, SessionError> {
        let info_hash = add.info_hash();
        if lock(&self.shared.torrents).contains_key(&info_hash) {
            return Err(SessionError::Duplicate(info_hash));
        }
        if self.shared.dht.is_none()
            && add.initial_peers().is_empty()
            && add.tracker_tiers().is_empty()
            && !add.is_seed()
        {
            return Err(SessionError::NoPeerSource);
        }
        let handle = supervisor::start(Arc::clone(&self.shared), add).await?;
        let mut map = lock(&self.shared.torrents);
        if map.contains_key(&info_hash) {
            handle.remove();
            return Err(SessionError::Duplicate(info_hash));
        }
        map.insert(info_hash, handle.clone());
        Ok(handle)
    }

    /// The handle of a torrent in the session.
    pub fn torrent(&self, info_hash: &Id) -> Option<TorrentHandle> {
        lock(&self.shared.torrents).get(info_hash).cloned()
    }

    /// Every torrent in the session.
    pub fn torrents(&self) -> Vec<TorrentHandle> {
        lock(&self.shared.torrents).values().cloned().collect()
    }

    /// Stops and forgets a torrent (its files stay on disk). False if unknown.
    pub fn remove_torrent(&self, info_hash: &Id) -> bool {
        match lock(&self.shared.torrents).remove(info_hash) {
            Some(h) => {
                h.remove();
                true
            }
            None => false,
        }
    }

    /// Changes the session's upload limit (bytes/s; `None` = unlimited), live.
    pub fn set_upload_limit(&self, limit: Option<u64>) {
        self.shared.upload_limit.set_rate(limit);
    }

    /// Changes the session's download limit (bytes/s; `None` = unlimited), live.
    pub fn set_download_limit(&self, limit: Option<u64>) {
        self.shared.download_limit.set_rate(limit);
    }

    /// Totals over every torrent, and the DHT's size.
    pub async fn stats(&self) -> SessionStats {
        let torrents = self.torrents();
        let mut s = SessionStats {
            torrents: torrents.len(),
            ..SessionStats::default()
        };
        for t in &torrents {
            let p = t.stats();
            s.uploaded += p.uploaded;
            s.downloaded += p.downloaded;
        }
        if let Some(d) = &self.shared.dht {
            s.dht_nodes = d.stats().await.map(|n| n.nodes).unwrap_or(0);
        }
        s
    }

    /// Stops every torrent, the listener and the DHT node (which saves nothing here; the
    /// `bootstrap` command keeps state).
    pub async fn shutdown(&self) {
        let torrents: Vec<TorrentHandle> = lock(&self.shared.torrents)
            .drain()
            .map(|(_, h)| h)
            .collect();
        for t in &torrents {
            t.remove();
        }
        for t in &torrents {
            t.stopped().await;
        }
        self.shared.listener.shutdown();
        if let Some(d) = &self.shared.dht {
            d.shutdown().await;
        }
    }
}
