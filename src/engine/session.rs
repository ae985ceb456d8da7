//! [`fetch`]: download one torrent from peers that stream in (e.g. from a DHT lookup), by
//! info-hash alone or with known metainfo, resuming from an earlier partial run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::driver::{Driver, DriverParams};
use super::seed::Seeder;
use super::torrent::{Corruptor, TorrentParams};
use super::{EngineConfig, EngineError};
use crate::id::Id;
use crate::torrent::Metainfo;

/// What to fetch and how. A struct so the CLI can fill what it knows and leave the rest to
/// [`EngineConfig::default`].
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// The torrent's info-hash.
    pub info_hash: Id,
    /// Metainfo, when known (from a `.torrent`); otherwise fetched from peers (BEP 9).
    pub metainfo: Option<Metainfo>,
    /// Directory the torrent's files (and the resume record) are written under.
    pub output_dir: PathBuf,
    /// Address to accept incoming peers on (port 0 picks one); `None` = outgoing only.
    pub listen: Option<SocketAddr>,
    /// Our peer id.
    pub peer_id: Id,
    /// Our DHT UDP port, sent to peers with PORT.
    pub dht_port: Option<u16>,
    /// Keep serving the torrent after it completes (see [`FetchOutcome::seeder`]).
    pub seed_after: bool,
    /// Engine limits and tunables.
    pub config: EngineConfig,
    /// Receives DHT node addresses learnt from peers' PORT messages.
    pub dht_nodes: Option<mpsc::UnboundedSender<SocketAddr>>,
}

impl FetchOptions {
    /// Options with defaults: no listener, no DHT port, no seeding afterwards.
    pub fn new(info_hash: Id, output_dir: PathBuf, peer_id: Id) -> FetchOptions {
        FetchOptions {
            info_hash,
            metainfo: None,
            output_dir,
            listen: None,
            peer_id,
            dht_port: None,
            seed_after: false,
            config: EngineConfig::default(),
            dht_nodes: None,
        }
    }
}

/// Stage of a fetch, for display.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Phase {
    /// No peer connected yet.
    #[default]
    FindingPeers,
    /// Connected, waiting for the info dictionary.
    FetchingMetadata,
    /// Downloading pieces.
    Downloading,
    /// All pieces verified; syncing data and the resume record.
    Finishing,
    /// Finished; every piece verified and on disk.
    Done,
    /// Finished and serving the torrent to others.
    Seeding,
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
    /// Payload bytes/s received, recent.
    pub download_rate: f64,
    /// Payload bytes/s sent, recent.
    pub upload_rate: f64,
    /// Time since the fetch started.
    pub elapsed: Duration,
}

/// Summary of a finished fetch (the CLI's `--json` fields come from here).
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
    /// From the start of `fetch` to everything verified and synced.
    pub elapsed: Duration,
    /// From the start to the first completed peer handshake.
    pub first_peer: Option<Duration>,
    /// From the start to the metadata being known (≈0 with a `.torrent`).
    pub metadata: Option<Duration>,
    /// Peers we completed a handshake with.
    pub peers_connected: usize,
    /// Bytes of pieces verified in this run (excludes resumed pieces).
    pub fetched_bytes: u64,
    /// Piece payload received, including duplicates and failed pieces.
    pub downloaded_bytes: u64,
    /// Pieces skipped because the resume record had them.
    pub pieces_resumed: u32,
    /// Pieces that failed their hash check (and were fetched again).
    pub hash_failures: u32,
    /// Peers banned for sending bad data.
    pub peers_banned: usize,
    /// `fetched_bytes` over the download phase (from metadata + first peer to the end), B/s.
    pub download_rate: f64,
}

impl FetchReport {
    /// Download rate in MB/s (10^6 bytes), as the CLI's `download_mb_s`.
    pub fn download_mb_s(&self) -> f64 {
        self.download_rate / 1e6
    }
}

/// What [`fetch`] returns: the report and, with `seed_after`, the seeder that keeps serving.
#[derive(Debug)]
pub struct FetchOutcome {
    /// Summary of the download.
    pub report: FetchReport,
    /// With [`FetchOptions::seed_after`]: the listener serving the torrent (and any added
    /// later). Call [`Seeder::shutdown`] to stop it.
    pub seeder: Option<Seeder>,
}

/// Stops a fetch's background tasks if the caller drops the `fetch` future.
struct Guard {
    t: Arc<super::torrent::Torrent>,
    seeder: Option<Seeder>,
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            self.t.shutdown.send_replace(true);
            if let Some(s) = &self.seeder {
                s.shutdown();
            }
        }
    }
}

/// Downloads the torrent `opts.info_hash` into `opts.output_dir`.
///
/// Peers are dialed as they arrive on `peers` (the DHT lookup streams them; drop the sender
/// when no more will come). Without `opts.metainfo` the info dictionary is fetched from peers
/// with BEP 9 and checked against the info-hash. Returns only when every piece is verified
/// and synced to disk, with an error if that cannot happen (e.g. [`EngineError::OutOfPeers`]
/// once the peer source has ended and no connection is left). Progress is published on
/// `progress`.
pub async fn fetch(
    opts: FetchOptions,
    peers: mpsc::Receiver<SocketAddr>,
    progress: watch::Sender<Progress>,
) -> Result<FetchOutcome, EngineError> {
    fetch_inner(opts, peers, progress, None).await
}

/// [`fetch`] with a test hook.
pub(crate) async fn fetch_inner(
    opts: FetchOptions,
    peers: mpsc::Receiver<SocketAddr>,
    progress: watch::Sender<Progress>,
    corrupt: Option<Corruptor>,
) -> Result<FetchOutcome, EngineError> {
    if let Some(mi) = &opts.metainfo {
        if mi.info_hash != opts.info_hash {
            return Err(EngineError::InfoHashMismatch {
                expected: opts.info_hash,
                found: mi.info_hash,
            });
        }
    }
    let cfg = Arc::new(opts.config);
    let seeder = match opts.listen {
        Some(addr) => {
            Some(Seeder::bind_shared(addr, opts.peer_id, opts.dht_port, Arc::clone(&cfg)).await?)
        }
        None => None,
    };
    let (t, events) = TorrentParams {
        info_hash: opts.info_hash,
        peer_id: opts.peer_id,
        cfg: Arc::clone(&cfg),
        dht_port: opts.dht_port,
        listen_port: seeder.as_ref().map(|s| s.local_addr().port()),
        corrupt,
    }
    .build();
    let mut guard = Guard {
        t: Arc::clone(&t),
        seeder: seeder.clone(),
        armed: true,
    };
    if let Some(s) = &seeder {
        s.register(Arc::clone(&t))?;
    }
    let (done_tx, done_rx) = oneshot::channel();
    let seed = u64::from_le_bytes(
        opts.peer_id
            .0
            .get(12..20)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([7u8; 8]),
    );
    let mut driver = Driver::new(DriverParams {
        t: Arc::clone(&t),
        output_dir: opts.output_dir,
        progress: Some(progress),
        done: Some(done_tx),
        seed_after: opts.seed_after,
        dht_nodes: opts.dht_nodes,
        seed,
    });
    if let Some(mi) = opts.metainfo {
        driver.setup_download(mi.info, mi.info_bytes).await?;
    }
    tokio::spawn(driver.run(events, Some(peers)));
    let report = done_rx
        .await
        .map_err(|_| EngineError::Internal("driver ended without a report".into()))??;
    if opts.seed_after && guard.seeder.is_some() {
        guard.armed = false;
        return Ok(FetchOutcome {
            report,
            seeder: guard.seeder.clone(),
        });
    }
    drop(guard);
    Ok(FetchOutcome {
        report,
        seeder: None,
    })
}
