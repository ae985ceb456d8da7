//! The download/seed engine: peer connections, piece picking, choking, metadata exchange,
//! fetch sessions and seeding.
//!
//! Layout (pure logic separate from I/O so the policies are unit-testable):
//! - [`picker`]: rarest-first block picker with endgame (sans-IO, seeded RNG).
//! - [`choker`]: regular + optimistic unchoke slots (sans-IO, injected time).
//! - `conn`: bounded frame reader, socket setup, handshake exchange.
//! - `torrent`: per-torrent shared state (metadata, storage, picker, peers).
//! - `peer`: one task per peer connection (both directions: download and upload).
//! - `hasher`: threads that SHA-1 check complete pieces in memory and write them.
//! - `driver`: the per-torrent control loop (dialing, choking, results, resume, bans).
//! - [`session`]: [`fetch`]; [`seed`]: [`Seeder`] and [`seed()`].
//!
//! Flow of a fetch: peers stream in → dialed (caps on total and half-open) → handshake and
//! BEP 10 → `ut_metadata` until the info dictionary hashes to the info-hash → blocks are
//! requested (pipeline sized to the peer's rate) → a piece's last block hands its buffer to
//! a hasher thread, which checks SHA-1 in memory and writes with positional writes → the
//! driver records it (resume, `have` to every peer), bans liars, and finishes when every
//! piece is verified and synced.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::id::Id;
use crate::torrent::{LayoutError, MetainfoError, ResumeError, StorageError};

pub mod choker;
mod conn;
mod driver;
mod hasher;
mod peer;
pub mod peer_list;
pub mod picker;
pub mod ratelimit;
pub mod seed;
pub mod session;
mod torrent;
pub mod trust;

#[cfg(test)]
mod tests;

pub use choker::ChokerConfig;
pub use seed::{seed, Seeder};
pub use session::{fetch, FetchOptions, FetchOutcome, FetchReport, Phase, Progress};

/// Engine tunables. One struct so the CLI, tests and benchmarks can adjust limits without
/// touching code; the defaults are what `dhtnode` ships with.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Most peer connections per torrent (established + being dialed).
    pub max_peers: usize,
    /// Most outgoing connections in the TCP/handshake phase at once.
    pub max_half_open: usize,
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
    /// Reconnection attempts for a peer whose connection failed or dropped.
    pub reconnect_attempts: u32,
    /// Delay before a reconnection attempt.
    pub reconnect_delay: Duration,
    /// Client name sent as `v` in the extension handshake.
    pub client_name: String,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_peers: 50,
            max_half_open: 8,
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
            queue_window: Duration::from_secs(3),
            min_queue: 2,
            max_queue: 500,
            initial_queue: 16,
            piece_buffer_budget: 48 * 1024 * 1024,
            hash_threads: 0,
            socket_buffer: None,
            resume_flush_interval: Duration::from_secs(2),
            reconnect_attempts: 3,
            reconnect_delay: Duration::from_secs(2),
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
    /// The torrent has no files or pieces we can serve or fetch.
    #[error("torrent data check failed: {missing} of {total} pieces do not match")]
    DataMismatch {
        /// Pieces that failed verification.
        missing: u32,
        /// Pieces in the torrent.
        total: u32,
    },
    /// The peer source ended and no connection is left or pending.
    #[error("ran out of peers: the peer source ended and every connection failed")]
    OutOfPeers,
    /// The engine was shut down before finishing.
    #[error("shut down before the download finished")]
    Cancelled,
    /// An engine task ended unexpectedly (a bug).
    #[error("internal engine error: {0}")]
    Internal(String),
}
