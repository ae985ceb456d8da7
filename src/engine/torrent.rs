//! Per-torrent state shared by the driver and every peer task.
//!
//! Shared through an `Arc<Torrent>`; the mutable part sits behind one `std::sync::Mutex`
//! (`State`) that is never held across an `.await`. Locks are short (a picker call and a
//! 16 KiB copy), so even one peer at loopback speed sees no contention worth a finer scheme.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::{mpsc, watch};

use super::endpoints::Endpoints;
use super::events::{Cmd, Event};
use super::hasher::HashJob;
use super::meta::{BufferPool, Meta};
use super::picker::{PeerKey, Picker};
use super::ratelimit::RateLimiter;
use super::EngineConfig;
use crate::id::Id;
use crate::sync::lock;
use crate::wire::MetadataAssembler;

/// Counters a peer task updates and the driver reads (rates, choker input).
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    /// Payload bytes received from the peer (everything, junk included).
    pub down: AtomicU64,
    /// Payload bytes of blocks we requested and the picker accepted: what tit-for-tat counts.
    pub valid_down: AtomicU64,
    /// Payload bytes sent to the peer.
    pub up: AtomicU64,
    /// The peer is interested in us.
    pub interested: AtomicBool,
    /// The peer has not sent a requested block for the snub timeout (anti-snubbing).
    pub snubbed: AtomicBool,
}

/// A connected peer, as the driver and other peers see it.
pub(crate) struct PeerEntry {
    /// Commands to the peer task.
    pub tx: mpsc::UnboundedSender<Cmd>,
    /// Remote address of the connection.
    pub addr: SocketAddr,
    /// The peer id from its handshake: one connection per peer id (a peer reachable over
    /// IPv4 and IPv6 is still one peer).
    pub peer_id: Id,
    /// We dialed (true) or the peer did.
    pub outgoing: bool,
    /// Shared counters.
    pub counters: Arc<PeerCounters>,
}

/// One metadata size some peers claim, and the assembler collecting pieces of that size.
pub(crate) struct SizeCandidate {
    /// Collects and verifies the pieces.
    pub asm: MetadataAssembler,
    /// After a hash mismatch with several contributors: fetch from one peer at a time so the
    /// next failure names the culprit.
    pub single_source: bool,
    /// The peer currently allowed to fetch in single-source mode.
    pub exclusive: Option<PeerKey>,
}

/// Most distinct `metadata_size` values assembled at once: a liar's size gets its own
/// assembler (and is banned when it fails alone) instead of blocking the honest one.
pub(crate) const MAX_METADATA_SIZES: usize = 4;

/// State of the metadata exchange.
#[derive(Default)]
pub(crate) struct MetaExchange {
    /// One assembler per claimed size.
    pub by_size: Vec<SizeCandidate>,
    /// The verified info dictionary has been handed to the driver.
    pub done: bool,
}

impl MetaExchange {
    /// The candidate for `size`, if any.
    pub(crate) fn get(&mut self, size: u64) -> Option<&mut SizeCandidate> {
        self.by_size.iter_mut().find(|c| c.asm.total_size() == size)
    }

    /// Releases everything `peer` held in every candidate.
    pub(crate) fn release_peer(&mut self, peer: PeerKey) {
        for c in &mut self.by_size {
            c.asm.release_peer(peer);
            if c.exclusive == Some(peer) {
                c.exclusive = None;
            }
        }
    }
}

/// Most banned IPs remembered per torrent (a bound on what liars can make us store).
pub(crate) const MAX_BANNED: usize = 4096;

/// The mutable part of a torrent.
pub(crate) struct State {
    /// The picker, once metadata is known.
    pub picker: Option<Picker>,
    /// Buffers of pieces being assembled.
    pub buffers: HashMap<u32, Vec<u8>>,
    /// Connected peers.
    pub peers: HashMap<PeerKey, PeerEntry>,
    /// IPs we refuse (sent bad data). Bans are per IP: a new port is the same peer.
    pub banned: HashSet<IpAddr>,
    /// Metadata exchange.
    pub meta_x: MetaExchange,
}

/// Hook for tests: serve wrong bytes for pieces where it returns true.
pub(crate) type Corruptor = Arc<dyn Fn(u32) -> bool + Send + Sync>;

/// One torrent, shared by its driver and peers.
pub(crate) struct Torrent {
    /// The info-hash.
    pub info_hash: Id,
    /// A BEP 52 hybrid's truncated v2 info-hash, when the torrent file was given: a peer we
    /// dial may answer our v1 handshake with it (libtorrent 2 does once it found us under
    /// the v2 hash), and that is the same torrent.
    pub info_hash_v2: Option<Id>,
    /// Our peer id.
    pub peer_id: Id,
    /// Tunables.
    pub cfg: Arc<EngineConfig>,
    /// Our DHT port, sent with PORT.
    pub dht_port: Option<u16>,
    /// Our TCP listeners per family: the port sent as `p`, the local IP outgoing
    /// connections are made from (so peers see the address we listen on), our `ipv6`.
    pub endpoints: Endpoints,
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
    /// Recycled piece buffers.
    pub pool: Arc<BufferPool>,
    /// Upload budget (shared by every torrent of a session).
    pub upload_limit: RateLimiter,
    /// Download budget (shared by every torrent of a session).
    pub download_limit: RateLimiter,
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

    /// Whether every piece is verified.
    pub(crate) fn is_complete(&self) -> bool {
        self.state()
            .picker
            .as_ref()
            .is_some_and(Picker::is_complete)
    }
}

/// Builds a torrent and the receiver of its events.
pub(crate) struct TorrentParams {
    pub info_hash: Id,
    pub info_hash_v2: Option<Id>,
    pub peer_id: Id,
    pub cfg: Arc<EngineConfig>,
    pub dht_port: Option<u16>,
    pub endpoints: Endpoints,
    pub corrupt: Option<Corruptor>,
    pub upload_limit: RateLimiter,
    pub download_limit: RateLimiter,
}

impl TorrentParams {
    /// Creates the shared torrent.
    pub(crate) fn build(self) -> (Arc<Torrent>, mpsc::UnboundedReceiver<Event>) {
        let (events, rx) = mpsc::unbounded_channel();
        let t = Torrent {
            info_hash: self.info_hash,
            info_hash_v2: self.info_hash_v2,
            peer_id: self.peer_id,
            cfg: self.cfg,
            dht_port: self.dht_port,
            endpoints: self.endpoints,
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
            pool: Arc::new(BufferPool::default()),
            upload_limit: self.upload_limit,
            download_limit: self.download_limit,
        };
        (Arc::new(t), rx)
    }
}
