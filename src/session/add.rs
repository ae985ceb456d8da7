//! What to add to a session and how: the torrent (info-hash, magnet, metainfo), where its
//! files go, extra peers, and whether to keep seeding.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::SessionError;
use crate::id::Id;
use crate::torrent::{parse_infohash_arg, Magnet, Metainfo};

/// The torrent itself, as the user named it.
#[derive(Clone, Debug)]
pub enum TorrentSource {
    /// An info-hash alone: the metadata comes from peers (BEP 9).
    InfoHash(Id),
    /// A magnet link (its `x.pe` peers are dialed too).
    Magnet(Magnet),
    /// A parsed `.torrent` (its `nodes` are DHT contacts).
    Metainfo(Box<Metainfo>),
}

/// A torrent to add, with its options. Build with [`AddTorrent::new`] or
/// [`AddTorrent::parse`], adjust the public fields, pass to
/// [`Session::add_torrent`](super::Session::add_torrent).
#[derive(Clone, Debug)]
pub struct AddTorrent {
    /// The torrent.
    pub source: TorrentSource,
    /// Directory its files (and the resume record) go under.
    pub output_dir: PathBuf,
    /// Peers to dial besides what the DHT and PEX find (`--peer`).
    pub peers: Vec<SocketAddr>,
    /// Trackers to announce to besides the torrent's own (`announce`, `announce-list`,
    /// magnet `tr`), each its own tier after them (`seed --tracker`).
    pub trackers: Vec<String>,
    /// Keep serving once complete, until removed.
    pub seed_after: bool,
    /// Keep serving once complete until this many times the torrent's size was uploaded;
    /// then the torrent stops (`--seed-ratio`). Ignored with `seed_after`.
    pub seed_ratio: Option<f64>,
    /// The data is already complete under `output_dir`: serve it (the torrent must be a
    /// [`TorrentSource::Metainfo`]); with `verify`, every piece is checked first.
    pub seed_existing: Option<SeedExisting>,
    /// Hash every piece already under `output_dir` at start instead of trusting the resume
    /// record (`fetch --recheck`); damaged pieces are fetched again.
    pub recheck: bool,
    /// Which files to download (`fetch --files`, `--only`); default every file. Pieces on
    /// the edges of a chosen file are fetched whole; unchosen files are not created.
    pub files: crate::torrent::FileSelection,
    /// Only learn the metadata (from the `.torrent`, or from peers for a magnet), create no
    /// file, and complete: [`FetchReport::info`](crate::engine::FetchReport::info) lists the
    /// files (`fetch --list`).
    pub metadata_only: bool,
}

/// How existing data is served (see [`AddTorrent::seed_existing`]).
#[derive(Clone, Copy, Debug)]
pub struct SeedExisting {
    /// Hash every piece before serving and serve only those that match (refuse to start if
    /// none does).
    pub verify: bool,
}

impl AddTorrent {
    /// Downloads `source` into `output_dir`, no extra peers, no seeding afterwards.
    pub fn new(source: TorrentSource, output_dir: PathBuf) -> AddTorrent {
        AddTorrent {
            source,
            output_dir,
            peers: Vec::new(),
            trackers: Vec::new(),
            seed_after: false,
            seed_ratio: None,
            seed_existing: None,
            recheck: false,
            files: crate::torrent::FileSelection::all(),
            metadata_only: false,
        }
    }

    /// Seeds the complete data of `metainfo` found under `data_dir`.
    pub fn seed(metainfo: Metainfo, data_dir: PathBuf, verify: bool) -> AddTorrent {
        AddTorrent {
            seed_existing: Some(SeedExisting { verify }),
            ..AddTorrent::new(TorrentSource::Metainfo(Box::new(metainfo)), data_dir)
        }
    }

    /// Parses what a user types: a `.torrent` path, a magnet link, or an info-hash (hex or
    /// base32).
    pub fn parse(target: &str, output_dir: PathBuf) -> Result<AddTorrent, SessionError> {
        let path = Path::new(target);
        if target.ends_with(".torrent") || (path.is_file() && !target.starts_with("magnet:")) {
            let mi = Metainfo::read_file(path)
                .map_err(|e| SessionError::BadTorrent(format!("reading {target}: {e}")))?;
            return Ok(AddTorrent::new(
                TorrentSource::Metainfo(Box::new(mi)),
                output_dir,
            ));
        }
        let m = parse_infohash_arg(target).map_err(|e| SessionError::BadTorrent(e.to_string()))?;
        Ok(AddTorrent::new(TorrentSource::Magnet(m), output_dir))
    }

    /// The torrent's info-hash.
    pub fn info_hash(&self) -> Id {
        match &self.source {
            TorrentSource::InfoHash(id) => *id,
            TorrentSource::Magnet(m) => m.info_hash,
            TorrentSource::Metainfo(mi) => mi.info_hash,
        }
    }

    /// The metainfo, when the source carries it.
    pub fn metainfo(&self) -> Option<&Metainfo> {
        match &self.source {
            TorrentSource::Metainfo(mi) => Some(mi),
            _ => None,
        }
    }

    /// Whether this serves existing data.
    pub fn is_seed(&self) -> bool {
        self.seed_existing.is_some()
    }

    /// Every peer to dial at start: `peers` plus a magnet's `x.pe`.
    pub fn initial_peers(&self) -> Vec<SocketAddr> {
        let mut v = self.peers.clone();
        if let TorrentSource::Magnet(m) = &self.source {
            v.extend(m.peers.iter().copied());
        }
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Every tracker to announce to, as BEP 12 tiers: the torrent's `announce-list` (or
    /// `announce`), a magnet's `tr` (one tier each), then [`AddTorrent::trackers`].
    pub fn tracker_tiers(&self) -> Vec<Vec<String>> {
        let mut tiers = match &self.source {
            TorrentSource::Metainfo(mi) => mi.trackers(),
            TorrentSource::Magnet(m) => m.trackers.iter().map(|t| vec![t.clone()]).collect(),
            TorrentSource::InfoHash(_) => Vec::new(),
        };
        tiers.extend(self.trackers.iter().map(|t| vec![t.clone()]));
        tiers
    }

    /// BEP 27: a private torrent uses no DHT and no PEX.
    pub(crate) fn is_private(&self) -> bool {
        self.metainfo().is_some_and(|m| m.info.private)
    }
}
