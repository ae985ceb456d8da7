//! The download/seed engine: peer connections, piece picking, choking, metadata exchange,
//! peer exchange, rate limits; downloading and seeding at once.
//!
//! Layout (pure logic separate from I/O so the policies are unit-testable):
//! - [`picker`]: rarest-first block picker with endgame (sans-IO, seeded RNG).
//! - [`hidden`]: how many pieces the others behind a seed reserved there unseen (sans-IO).
//! - [`choker`]: tit-for-tat + optimistic unchoke, round-robin while seeding (sans-IO).
//! - [`peer_list`]: the bounded list of addresses to dial, with per-address back-off.
//! - [`trust`]: who sent bad data (libtorrent's trust points); bans are per IP.
//! - [`ratelimit`]: token buckets for the upload and download limits.
//! - `endpoints`: our listen address per family (BEP 32 dual stack) and what it implies.
//! - `conn`: bounded frame reader, socket setup, handshake exchange.
//! - `events`, `report`: the messages between the parts, and what a torrent reports.
//! - `meta`, `torrent`: per-torrent shared state (metadata, storage, picker, peers).
//! - `peer`: one task per peer connection (download, upload, metadata, PEX; one file each).
//! - `hasher`: threads that SHA-1 check complete pieces in memory and write them.
//! - `driver`: the per-torrent control loop (dialing, choking, results, resume, bans, PEX).
//! - [`listener`]: the TCP listener shared by all torrents, and [`Listener::start`].
//!
//! The library's face is [`crate::session::Session`], which feeds torrents their peers (DHT,
//! `--peer`, magnet `x.pe`) and announces them; this module knows nothing of the DHT.
//!
//! Flow of a download: peers stream in → dialed (caps on total and half-open) → handshake and
//! BEP 10 → `ut_metadata` until the info dictionary hashes to the info-hash → blocks are
//! requested (pipeline sized to the peer's rate) → a piece's last block hands its buffer to
//! a hasher thread, which checks SHA-1 in memory and writes with positional writes → the
//! driver records it (resume, `have` to every peer, which may request it from us at once),
//! attributes bad data, and finishes when every piece is verified and synced.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::id::Id;
use crate::torrent::{LayoutError, MetainfoError, ResumeError, StorageError};

pub mod choker;
mod conn;
mod driver;
mod endpoints;
mod events;
mod hasher;
pub mod hidden;
pub mod listener;
mod meta;
mod peer;
pub mod peer_list;
pub mod picker;
pub mod ratelimit;
pub mod report;
mod torrent;
pub mod trust;

#[cfg(test)]
mod dual_stack_tests;
#[cfg(test)]
mod fairness_tests;
#[cfg(test)]
mod tests;

pub use choker::ChokerConfig;
pub use listener::{Listener, ListenerConfig, RunningTorrent, StartMode, TorrentSpec};
pub use peer_list::PeerSource;
pub use ratelimit::RateLimiter;
pub use report::{FetchReport, Phase, Progress};

/// Engine tunables. One struct so the CLI, tests and benchmarks can adjust limits without
/// touching code; the defaults are what `dhtnode` ships with.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most peer connections per torrent (established + being dialed).
    pub max_peers: usize,
    /// Most outgoing connections in the TCP/handshake phase at once.
    pub max_half_open: usize,
    /// Most incoming connections that have not completed their handshake, per listener.
    pub max_pending_handshakes: usize,
    /// Most peer addresses remembered per torrent (connected or candidates).
    pub max_known_peers: usize,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Time allowed for the BitTorrent handshake after connecting.
    pub handshake_timeout: Duration,
    /// A peer with requests outstanding that sends no block for this long is snubbed: its
    /// requests go to other peers and its queue drops to one request.
    pub snub_timeout: Duration,
    /// A connection on which nothing at all arrives for this long is closed.
    pub idle_timeout: Duration,
    /// Interval of keep-alive messages.
    pub keepalive_interval: Duration,
    /// Most block requests we queue from one peer; more than that and the peer is dropped.
    pub max_requests_per_peer: usize,
    /// Largest info dictionary we accept via `ut_metadata`.
    pub max_metadata_size: u64,
    /// Metadata pieces requested from one peer at a time.
    pub metadata_requests_per_peer: usize,
    /// A metadata piece not answered within this time is asked of another peer.
    pub metadata_timeout: Duration,
    /// Choker slots and rotation.
    pub choker: ChokerConfig,
    /// Per-peer request queue: `rate × queue_window ÷ 16 KiB`, clamped to
    /// `min_queue..=max_queue`; starts at `initial_queue` and grows by one per block received
    /// until the first rate measurement (slow start).
    pub queue_window: Duration,
    /// Request queue at a seed while other peers unchoke us too (a swarm): `rate ×
    /// seed_queue_window ÷ 16 KiB`, at least one piece, at most the normal queue. Shallow so
    /// that few pieces are reserved at a seed the whole crowd shares, and it sends each
    /// piece about once.
    pub seed_queue_window: Duration,
    /// Lower bound of the request queue.
    pub min_queue: usize,
    /// Upper bound of the request queue.
    pub max_queue: usize,
    /// Initial request queue of a new peer.
    pub initial_queue: usize,
    /// Memory for pieces being assembled and waiting to be hashed (bounds peak RSS).
    pub piece_buffer_budget: u64,
    /// Hashing/writing threads; 0 picks one per CPU (at most 4).
    pub hash_threads: usize,
    /// `SO_RCVBUF`/`SO_SNDBUF` for peer sockets; `None` keeps the kernel's autotuning.
    pub socket_buffer: Option<u32>,
    /// Verified pieces are made durable (data synced, then record written) at least this often.
    pub resume_flush_interval: Duration,
    /// Failed attempts in a row after which an address counts as exhausted: once every known
    /// address is, and no peer source is left, the download fails with
    /// [`EngineError::OutOfPeers`]. (Addresses are still retried while sources remain.)
    pub reconnect_attempts: u32,
    /// First back-off step after a failed connection; it doubles with each failure in a row,
    /// up to 10 minutes.
    pub reconnect_delay: Duration,
    /// Client name sent as `v` in the extension handshake.
    pub client_name: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_peers: 50,
            max_half_open: 8,
            max_pending_handshakes: 64,
            max_known_peers: 2000,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            snub_timeout: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(180),
            keepalive_interval: Duration::from_secs(60),
            max_requests_per_peer: 500,
            max_metadata_size: crate::wire::DEFAULT_MAX_METADATA_SIZE,
            metadata_requests_per_peer: 4,
            metadata_timeout: Duration::from_secs(5),
            choker: ChokerConfig::default(),
            queue_window: Duration::from_secs(1),
            seed_queue_window: Duration::from_millis(250),
            min_queue: 2,
            max_queue: 500,
            initial_queue: 16,
            piece_buffer_budget: 48 * 1024 * 1024,
            hash_threads: 0,
            socket_buffer: None,
            resume_flush_interval: Duration::from_secs(2),
            reconnect_attempts: 3,
            reconnect_delay: Duration::from_secs(3),
            client_name: format!("dhtnode {}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// Why a fetch or seed failed as a whole (single peers failing are not errors: they are
/// dropped and the download continues with the others).
#[derive(Debug, Error)]
pub enum EngineError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing the torrent's files failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The resume record could not be written.
    #[error(transparent)]
    Resume(#[from] ResumeError),
    /// The info dictionary (fetched or given) is invalid.
    #[error("invalid torrent metadata")]
    Metainfo(#[from] MetainfoError),
    /// The torrent's geometry is invalid.
    #[error(transparent)]
    Layout(#[from] LayoutError),
    /// A blocking task (parsing fetched metadata) panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The given metainfo is for another info-hash than the one requested.
    #[error("metainfo is for {found}, not {expected}")]
    InfoHashMismatch {
        /// The info-hash asked for.
        expected: Id,
        /// The metainfo's info-hash.
        found: Id,
    },
    /// The torrent is already served by this seeder.
    #[error("torrent {0} is already being served")]
    Duplicate(Id),
    /// The data to seed has no piece that matches the torrent.
    #[error("torrent data check failed: {missing} of {total} pieces do not match")]
    DataMismatch {
        /// Pieces that failed verification.
        missing: u32,
        /// Pieces in the torrent.
        total: u32,
    },
    /// The file selection does not fit the torrent (index out of range, matches nothing).
    #[error(transparent)]
    Selection(#[from] crate::torrent::SelectError),
    /// The peer source ended and no connection is left or pending.
    #[error("ran out of peers: the peer source ended and every connection failed")]
    OutOfPeers,
    /// The engine was shut down before finishing.
    #[error("stopped before the download finished")]
    Cancelled,
    /// An engine task ended unexpectedly (a bug).
    #[error("internal engine error: {0}")]
    Internal(String),
}
