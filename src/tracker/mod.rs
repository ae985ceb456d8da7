//! Trackers as a peer source beside the DHT: HTTP announces (BEP 3, compact peers BEP 23,
//! `peers6` BEP 7), UDP announces (BEP 15), scrape (BEP 48 / BEP 15) and announce-list tiers
//! (BEP 12).
//!
//! Layout, one job a file: [`url`] (which trackers a torrent names, request URLs and the
//! binary percent-encoding), [`response`] (HTTP bencoded answers to typed values), [`udp_proto`]
//! (BEP 15 packets and the connect/announce/retransmit state machine, sans-IO), [`udp`] and
//! [`http`] (the sockets), [`tiers`] (BEP 12 order), [`schedule`] (when to announce next,
//! with time passed in), [`client`] (one announce or scrape to any URL). The per-torrent loop
//! that feeds peers to the engine is `session::trackers`.
//!
//! Every answer is untrusted: bodies and datagrams are size-capped, peer lists are cut at
//! [`MAX_PEERS`], and any failure is a [`TrackerError`] the caller logs once and moves on from.

pub mod client;
pub mod http;
pub mod response;
pub mod schedule;
pub mod tiers;
pub mod udp;
pub mod udp_proto;
pub mod url;

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;

use crate::id::Id;

pub use client::{Client, ClientConfig};
pub use schedule::Schedule;
pub use tiers::Tiers;
pub use url::TrackerUrl;

/// Most peers taken from one answer: a tracker that sends more is cut here (a hostile one
/// could otherwise fill memory; the engine's peer list is bounded too).
pub const MAX_PEERS: usize = 1000;
/// How many peers we ask for (`numwant`).
pub const NUMWANT: u32 = 200;

/// Which BEP 3 event an announce reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AnnounceEvent {
    /// A regular re-announce.
    None,
    /// The first announce of a torrent.
    Started,
    /// The download just completed (sent once, never for a torrent that started complete).
    Completed,
    /// The torrent stops: the tracker may forget us.
    Stopped,
}

impl AnnounceEvent {
    /// The `event=` value of an HTTP announce (`None` for a regular one).
    pub fn http_name(self) -> Option<&'static str> {
        match self {
            AnnounceEvent::None => None,
            AnnounceEvent::Started => Some("started"),
            AnnounceEvent::Completed => Some("completed"),
            AnnounceEvent::Stopped => Some("stopped"),
        }
    }

    /// The BEP 15 event number.
    pub fn udp_code(self) -> u32 {
        match self {
            AnnounceEvent::None => 0,
            AnnounceEvent::Completed => 1,
            AnnounceEvent::Started => 2,
            AnnounceEvent::Stopped => 3,
        }
    }
}

/// What one announce tells the tracker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// The torrent.
    pub info_hash: Id,
    /// Our peer id.
    pub peer_id: Id,
    /// Our TCP listen port.
    pub port: u16,
    /// Payload bytes uploaded since the torrent started.
    pub uploaded: u64,
    /// Payload bytes downloaded since the torrent started.
    pub downloaded: u64,
    /// Bytes still missing (a large number while the size is unknown: a magnet before its
    /// metadata, so the tracker counts us as a leecher).
    pub left: u64,
    /// The event.
    pub event: AnnounceEvent,
    /// Peers wanted.
    pub numwant: u32,
    /// A random number that stays the same for the session, so the tracker can tell us
    /// apart when our IP changes (BEP 3 `key`, BEP 15 `key`).
    pub key: u32,
}

/// A tracker's answer to an announce, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AnnounceResponse {
    /// How long to wait before the next regular announce.
    pub interval: Option<Duration>,
    /// The shortest wait the tracker accepts between announces.
    pub min_interval: Option<Duration>,
    /// Peers (IPv4 and IPv6), at most [`MAX_PEERS`], without duplicates.
    pub peers: Vec<SocketAddr>,
    /// More peers were sent than [`MAX_PEERS`]; the rest were dropped.
    pub truncated: bool,
    /// Seeders the tracker knows (`complete`).
    pub seeders: Option<u32>,
    /// Leechers the tracker knows (`incomplete`).
    pub leechers: Option<u32>,
    /// A non-fatal `warning message`.
    pub warning: Option<String>,
    /// `tracker id`, echoed back in later announces.
    pub tracker_id: Option<String>,
}

/// A tracker's counts for one torrent (scrape).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeStats {
    /// Seeders.
    pub complete: u32,
    /// Completed downloads ever reported.
    pub downloaded: u32,
    /// Leechers.
    pub incomplete: u32,
}

/// Why an announce or scrape gave nothing. Each one is logged as one line and the torrent
/// carries on with its other sources.
#[derive(Debug, Error)]
pub enum TrackerError {
    /// The URL is not one we can announce to.
    #[error("unusable tracker URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    /// The tracker said no (`failure reason`, or a BEP 15 error packet).
    #[error("tracker refused: {0}")]
    Failure(String),
    /// The answer is not a valid tracker response.
    #[error("malformed tracker answer: {0}")]
    Malformed(String),
    /// The answer was larger than we accept.
    #[error("tracker answer larger than {0} bytes")]
    TooLarge(usize),
    /// An HTTP status other than 200 without a readable failure reason.
    #[error("HTTP status {0}")]
    Status(u16),
    /// Transport failure: refused, reset, TLS, too many redirects, ...
    #[error("HTTP: {0}")]
    Http(String),
    /// No answer in time (after every retransmission, for UDP).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The host name did not resolve to an address we can use.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// A socket error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The tracker does not support scrape (no `announce` in its path, BEP 48).
    #[error("this tracker has no scrape URL")]
    NoScrape,
}
