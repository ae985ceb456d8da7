//! What a running torrent tells the outside: its phase, live progress, and the summary of a
//! finished download. Kept apart from the driver that produces them so the session, the CLI
//! and the driver all import them from one place (no import cycles).

use std::time::Duration;

use crate::id::Id;

/// Stage of a torrent, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// No peer connected yet.
    #[default]
    FindingPeers,
    /// Connected, waiting for the info dictionary.
    FetchingMetadata,
    /// Hashing data already on disk that the resume record cannot vouch for (files changed
    /// since, no record, or `--recheck`); nothing is requested meanwhile.
    Checking,
    /// Downloading pieces (and uploading the ones we have).
    Downloading,
    /// All pieces verified; syncing data and the resume record.
    Finishing,
    /// Finished; every piece verified and on disk.
    Done,
    /// Complete and serving the torrent to others.
    Seeding,
    /// Stopped by the user; the resume record keeps what was verified.
    Paused,
}

impl Phase {
    /// A short lowercase name for logs and progress lines.
    pub fn name(self) -> &'static str {
        match self {
            Phase::FindingPeers => "finding peers",
            Phase::FetchingMetadata => "metadata",
            Phase::Checking => "checking",
            Phase::Downloading => "downloading",
            Phase::Finishing => "finishing",
            Phase::Done => "done",
            Phase::Seeding => "seeding",
            Phase::Paused => "paused",
        }
    }
}

/// Live progress, published on a `watch` channel (the CLI draws its bar from it).
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Current stage.
    pub phase: Phase,
    /// Torrent name, once known.
    pub name: Option<String>,
    /// Verified pieces.
    pub pieces_done: u32,
    /// Pieces in the torrent (0 until the metadata is known).
    pub pieces_total: u32,
    /// Bytes in verified pieces.
    pub bytes_done: u64,
    /// Total torrent size (0 until the metadata is known).
    pub bytes_total: u64,
    /// Connected peers.
    pub peers: usize,
    /// Addresses known (connected or not) that we may dial.
    pub peers_known: usize,
    /// Payload bytes/s received, recent.
    pub download_rate: f64,
    /// Payload bytes/s sent, recent.
    pub upload_rate: f64,
    /// Payload bytes received so far (including duplicates and failed pieces).
    pub downloaded: u64,
    /// Payload bytes uploaded so far.
    pub uploaded: u64,
    /// Time since the torrent started.
    pub elapsed: Duration,
    /// While [`Phase::Checking`]: pieces hashed so far of `check_total`.
    pub check_done: u32,
    /// Pieces the start-up check hashes (0 when the record vouched for everything).
    pub check_total: u32,
}

/// Summary of a finished download (the CLI's `--json` fields come from here).
#[derive(Clone, Debug)]
pub struct FetchReport {
    /// The info-hash.
    pub info_hash: Id,
    /// Torrent name.
    pub name: String,
    /// Total size in bytes.
    pub bytes: u64,
    /// Number of pieces.
    pub pieces: u32,
    /// From the start of the torrent to everything verified and synced.
    pub elapsed: Duration,
    /// From the start to the first completed peer handshake.
    pub first_peer: Option<Duration>,
    /// From the start to the metadata being known (≈0 with a `.torrent`).
    pub metadata: Option<Duration>,
    /// Peers we completed a handshake with.
    pub peers_connected: usize,
    /// Distinct addresses learnt through PEX (BEP 11).
    pub peers_from_pex: usize,
    /// Bytes of pieces verified in this run (excludes resumed pieces).
    pub fetched_bytes: u64,
    /// Piece payload received, including duplicates and failed pieces.
    pub downloaded_bytes: u64,
    /// Piece payload uploaded to other peers up to completion.
    pub uploaded_bytes: u64,
    /// Pieces not fetched because they were already good on disk: vouched for by the resume
    /// record (files unchanged) or hashed at start.
    pub pieces_resumed: u32,
    /// Pieces hashed from disk at start (files changed since the record, no record, or a
    /// forced recheck); those that matched count in `pieces_resumed`.
    pub pieces_checked: u32,
    /// Pieces downloaded and verified in this run.
    pub pieces_fetched: u32,
    /// Pieces that failed their hash check (and were fetched again).
    pub hash_failures: u32,
    /// Peers (IPs) banned for sending bad data.
    pub peers_banned: usize,
    /// `fetched_bytes` over the download phase (from metadata + first peer to the end), B/s.
    pub download_rate: f64,
    /// Pieces the file selection needs (= `pieces` without a selection).
    pub pieces_wanted: u32,
    /// Bytes of the selected files (= `bytes` without a selection; padding not counted).
    pub bytes_wanted: u64,
    /// The torrent's info dictionary: its file list, for `fetch --list` and embedders that
    /// want to show or choose files (always set once the metadata is known).
    pub info: Option<std::sync::Arc<crate::torrent::Info>>,
}

impl FetchReport {
    /// Download rate in MB/s (10^6 bytes), as the CLI's `download_mb_s`.
    pub fn download_mb_s(&self) -> f64 {
        self.download_rate / 1e6
    }
}
