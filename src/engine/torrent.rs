//! Per-torrent state shared by the driver and every peer task.
//!
//! Shared through an `Arc<Torrent>`; the mutable part sits behind one `std::sync::Mutex`
//! (`State`) that is never held across an `.await`. Locks are short (a picker call and a
//! 16 KiB copy), so even one peer at loopback speed sees no contention worth a finer scheme.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{mpsc, watch};

use super::hasher::HashJob;
use super::picker::{PeerKey, Picker};
use super::EngineConfig;
use crate::id::Id;
use crate::torrent::{Info, Layout, LayoutError, Storage, StorageError};
use crate::wire::{BlockRequest, MetadataAssembler};

/// Locks a mutex, ignoring poisoning (a panicked peer task must not take the torrent down).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything known once the info dictionary is: geometry, files, the dictionary itself.
pub(crate) struct Meta {
    /// The parsed info dictionary.
    pub info: Info,
    /// Its exact bytes (served via `ut_metadata`).
    pub info_bytes: Vec<u8>,
    /// Piece/file geometry.
    pub layout: Layout,
    /// The files on disk.
    pub storage: Storage,
    /// Read-only handles for serving blocks, opened lazily.
    read_files: Mutex<HashMap<usize, Arc<File>>>,
}

impl Meta {
    /// Wraps parsed metadata and opened storage.
    pub(crate) fn new(info: Info, info_bytes: Vec<u8>, storage: Storage) -> Meta {
        Meta {
            layout: storage.layout().clone(),
            info,
            info_bytes,
            storage,
            read_files: Mutex::new(HashMap::new()),
        }
    }

    fn read_file(&self, i: usize) -> Result<Arc<File>, StorageError> {
        let mut files = lock(&self.read_files);
        if let Some(f) = files.get(&i) {
            return Ok(Arc::clone(f));
        }
        let path = self
            .storage
            .file_path(i)
            .map(PathBuf::from)
            .ok_or(LayoutError::Empty)?;
        let f = File::open(&path)
            .map(Arc::new)
            .map_err(|source| StorageError::Io { path, source })?;
        if files.len() >= crate::torrent::storage::MAX_OPEN_FILES {
            files.clear();
        }
        files.insert(i, Arc::clone(&f));
        Ok(f)
    }

    /// Reads block `req` straight into `out` (exactly `req.length` bytes), for seeding.
    pub(crate) fn read_block_into(
        &self,
        req: &BlockRequest,
        out: &mut [u8],
    ) -> Result<(), StorageError> {
        let mut pos = 0usize;
        for seg in self.layout.segments(req.index, req.begin, req.length)? {
            let n = usize::try_from(seg.len).map_err(|_| LayoutError::Empty)?;
            let dst = out.get_mut(pos..pos + n).ok_or(LayoutError::Empty)?;
            let f = self.read_file(seg.file)?;
            f.read_exact_at(dst, seg.offset)
                .map_err(|source| StorageError::Io {
                    path: self
                        .storage
                        .file_path(seg.file)
                        .map(PathBuf::from)
                        .unwrap_or_default(),
                    source,
                })?;
            pos += n;
        }
        Ok(())
    }
}

/// Commands from the driver (or another peer's task) to one peer task.
#[derive(Debug, Clone)]
pub(crate) enum Cmd {
    /// We completed a piece: send `have`.
    Have(u32),
    /// Another peer delivered this block first (endgame): send `cancel`.
    Cancel(BlockRequest),
    /// Choke (true) or unchoke (false) the peer.
    Choke(bool),
    /// Close the connection (banned, or we are both seeds).
    Close(&'static str),
}

/// Counters a peer task updates and the driver reads (rates, choker input).
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    /// Payload bytes received from the peer.
    pub down: AtomicU64,
    /// Payload bytes sent to the peer.
    pub up: AtomicU64,
    /// The peer is interested in us.
    pub interested: AtomicBool,
}

/// A connected peer, as the driver and other peers see it.
pub(crate) struct PeerEntry {
    /// Commands to the peer task.
    pub tx: mpsc::UnboundedSender<Cmd>,
    /// The address we would dial (listen address) if known, else the remote address.
    pub addr: SocketAddr,
    /// Shared counters.
    pub counters: Arc<PeerCounters>,
}

/// State of the metadata exchange.
#[derive(Default)]
pub(crate) struct MetaExchange {
    /// Assembler, once a peer told us the size.
    pub assembler: Option<MetadataAssembler>,
    /// After a hash mismatch with several contributors: fetch from one peer at a time so the
    /// next failure names the culprit.
    pub single_source: bool,
    /// The peer currently allowed to fetch in single-source mode.
    pub exclusive: Option<PeerKey>,
    /// The verified info dictionary has been handed to the driver.
    pub done: bool,
}

/// The mutable part of a torrent.
pub(crate) struct State {
    /// The picker, once metadata is known.
    pub picker: Option<Picker>,
    /// Buffers of pieces being assembled.
    pub buffers: HashMap<u32, Vec<u8>>,
    /// Connected peers.
    pub peers: HashMap<PeerKey, PeerEntry>,
    /// Addresses we refuse (sent bad data).
    pub banned: HashSet<SocketAddr>,
    /// Metadata exchange.
    pub meta_x: MetaExchange,
}

/// Events from peer tasks and hashers to the driver.
#[derive(Debug)]
pub(crate) enum Event {
    /// A handshake completed.
    PeerUp {
        /// Connection id.
        key: PeerKey,
        /// Dial/remote address.
        addr: SocketAddr,
    },
    /// A connection ended.
    PeerDown {
        /// Connection id.
        key: PeerKey,
        /// Dial/remote address.
        addr: SocketAddr,
        /// Whether we should not try this peer again.
        fatal: bool,
    },
    /// An outgoing connection attempt finished its connect/handshake phase.
    DialDone {
        /// Address dialed.
        addr: SocketAddr,
        /// Whether a peer task is now running for it.
        ok: bool,
    },
    /// A peer's interest in us changed (choker input).
    Interest,
    /// The verified info dictionary.
    Metadata(Vec<u8>),
    /// A peer must be banned (bad metadata).
    Ban(SocketAddr),
    /// A piece was hashed (and written, if good).
    Hashed(super::hasher::HashResult),
    /// A peer's DHT port (BEP 5 PORT).
    DhtPort(SocketAddr),
}

/// Hook for tests: serve wrong bytes for pieces where it returns true.
pub(crate) type Corruptor = Arc<dyn Fn(u32) -> bool + Send + Sync>;

/// One torrent, shared by its driver and peers.
pub(crate) struct Torrent {
    /// The info-hash.
    pub info_hash: Id,
    /// Our peer id.
    pub peer_id: Id,
    /// Tunables.
    pub cfg: Arc<EngineConfig>,
    /// Our DHT port, sent with PORT.
    pub dht_port: Option<u16>,
    /// Our TCP listen port, sent as `p`.
    pub listen_port: Option<u16>,
    /// Metadata, once known.
    pub meta: OnceLock<Arc<Meta>>,
    /// Flips to true when `meta` is set, waking peer tasks.
    pub meta_ready: watch::Sender<bool>,
    /// Flips to true when the torrent shuts down.
    pub shutdown: watch::Sender<bool>,
    /// Mutable state.
    pub state: Mutex<State>,
    /// Events to the driver.
    pub events: mpsc::UnboundedSender<Event>,
    /// Complete pieces to the hashers (None when not downloading).
    pub hash_tx: Mutex<Option<mpsc::Sender<HashJob>>>,
    /// Test hook: serve corrupted data for some pieces.
    pub corrupt: Option<Corruptor>,
    /// Piece payload bytes received from all peers (including wasted duplicates).
    pub downloaded: AtomicU64,
    /// Piece payload bytes sent to all peers.
    pub uploaded: AtomicU64,
    /// Recycled piece buffers: fresh large allocations cost page faults and zeroing per
    /// piece, which shows at loopback speed.
    pub buffer_pool: Mutex<Vec<Vec<u8>>>,
}

/// Most piece buffers kept for reuse.
pub(crate) const POOL_MAX: usize = 16;

impl Torrent {
    /// A buffer of exactly `size` bytes, recycled when possible (contents unspecified).
    pub(crate) fn take_buffer(&self, size: usize) -> Vec<u8> {
        let mut pool = lock(&self.buffer_pool);
        match pool.iter().position(|b| b.len() == size) {
            Some(i) => pool.swap_remove(i),
            None => vec![0u8; size],
        }
    }

    /// Returns a buffer to the pool (dropped if the pool is full).
    pub(crate) fn give_buffer(&self, buf: Vec<u8>) {
        let mut pool = lock(&self.buffer_pool);
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    }
}

static NEXT_KEY: AtomicU64 = AtomicU64::new(1);

/// A fresh connection id.
pub(crate) fn next_key() -> PeerKey {
    NEXT_KEY.fetch_add(1, Ordering::Relaxed)
}

impl Torrent {
    /// Locks the mutable state.
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Metadata, if known.
    pub(crate) fn meta(&self) -> Option<&Arc<Meta>> {
        self.meta.get()
    }

    /// Whether the torrent is shutting down.
    pub(crate) fn is_shutdown(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Builds a torrent and the receiver of its events.
pub(crate) struct TorrentParams {
    pub info_hash: Id,
    pub peer_id: Id,
    pub cfg: Arc<EngineConfig>,
    pub dht_port: Option<u16>,
    pub listen_port: Option<u16>,
    pub corrupt: Option<Corruptor>,
}

impl TorrentParams {
    /// Creates the shared torrent.
    pub(crate) fn build(self) -> (Arc<Torrent>, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let t = Torrent {
            info_hash: self.info_hash,
            peer_id: self.peer_id,
            cfg: self.cfg,
            dht_port: self.dht_port,
            listen_port: self.listen_port,
            meta: OnceLock::new(),
            meta_ready: watch::channel(false).0,
            shutdown: watch::channel(false).0,
            state: Mutex::new(State {
                picker: None,
                buffers: HashMap::new(),
                peers: HashMap::new(),
                banned: HashSet::new(),
                meta_x: MetaExchange::default(),
            }),
            events,
            hash_tx: Mutex::new(None),
            corrupt: self.corrupt,
            downloaded: AtomicU64::new(0),
            uploaded: AtomicU64::new(0),
            buffer_pool: Mutex::new(Vec::new()),
        };
        (Arc::new(t), rx)
    }
}
