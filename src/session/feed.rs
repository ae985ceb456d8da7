//! The DHT as a peer source for one torrent: get_peers lookups that repeat for as long as the
//! torrent downloads (every couple of seconds while short of peers, backing off to a few
//! minutes once there are enough), and announces — at start, as soon as the node has joined,
//! and again on schedule — whose lookups feed peers too.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use super::handle::{FeedStats, TorrentEvent};
use super::FeedSchedule;
use crate::engine::{PeerSource, Phase, Progress};
use crate::id::Id;
use crate::net::{DhtHandle, LookupUpdate, PeerStream};

/// Longest wait for the node to join before the first announce goes out anyway.
const JOIN_WAIT: Duration = Duration::from_secs(10);
/// Longest wait for one announce round (lookup plus acknowledgements).
const ANNOUNCE_WAIT: Duration = Duration::from_secs(30);

/// What a feed needs.
pub(crate) struct Feed {
    pub dht: DhtHandle,
    pub info_hash: Id,
    /// Our TCP port, announced.
    pub port: u16,
    /// Our IPv6 TCP port, announced into the IPv6 DHT (`None`: `port`).
    pub port6: Option<u16>,
    pub peers: mpsc::Sender<(SocketAddr, PeerSource)>,
    pub progress: watch::Receiver<Progress>,
    pub stats: Arc<FeedStats>,
    pub schedule: FeedSchedule,
    pub events: broadcast::Sender<TorrentEvent>,
}

/// Starts the lookups and the announcer; abort the handle to stop both.
pub(crate) fn spawn(f: Feed) -> JoinHandle<()> {
    tokio::spawn(async move {
        let announcer = tokio::spawn(announce_loop(
            f.dht.clone(),
            f.info_hash,
            (f.port, f.port6),
            f.peers.clone(),
            Arc::clone(&f.stats),
            f.schedule.reannounce,
            f.events.clone(),
        ));
        lookup_loop(&f).await;
        // Complete: no more lookups needed (peers find a seed); keep announcing.
        let _ = announcer.await;
    })
}

/// Feeds every peer of a lookup's answers to the torrent; false once the torrent is gone.
async fn drain(
    mut stream: PeerStream,
    peers: &mpsc::Sender<(SocketAddr, PeerSource)>,
    stats: &FeedStats,
) -> bool {
    while let Some(u) = stream.next_update().await {
        match u {
            LookupUpdate::Peers(ps) => {
                for p in ps {
                    stats.saw_peer();
                    if peers.send((p, PeerSource::Dht)).await.is_err() {
                        return false;
                    }
                }
            }
            LookupUpdate::Done(s) => {
                stats.lookup_done(s.stats.queried, s.stats.first_peer_hops);
                return true;
            }
            LookupUpdate::AnnounceAcked(_) => {}
        }
    }
    true
}

fn downloading(p: &Progress) -> bool {
    !matches!(p.phase, Phase::Seeding | Phase::Done | Phase::Paused)
}

async fn lookup_loop(f: &Feed) {
    let mut short_pause = f.schedule.short_first;
    loop {
        if !downloading(&f.progress.borrow()) {
            return;
        }
        let Ok(stream) = f.dht.get_peers(f.info_hash) else {
            return;
        };
        if !drain(stream, &f.peers, &f.stats).await {
            return;
        }
        // Short of peers: look again soon (others may be announcing right now), backing off.
        let started = tokio::time::Instant::now();
        loop {
            let connected = f.progress.borrow().peers;
            let pause = if connected < f.schedule.enough_peers {
                short_pause
            } else {
                f.schedule.steady
            };
            if started.elapsed() >= pause {
                if connected < f.schedule.enough_peers {
                    short_pause = (short_pause * 2).min(f.schedule.short_max);
                } else {
                    short_pause = f.schedule.short_first;
                }
                break;
            }
            if !downloading(&f.progress.borrow()) || f.peers.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn announce_loop(
    dht: DhtHandle,
    info_hash: Id,
    (port, port6): (u16, Option<u16>),
    peers: mpsc::Sender<(SocketAddr, PeerSource)>,
    stats: Arc<FeedStats>,
    every: Duration,
    events: broadcast::Sender<TorrentEvent>,
) {
    let _ = tokio::time::timeout(JOIN_WAIT, dht.wait_bootstrapped()).await;
    loop {
        match announce_ports(&dht, info_hash, (port, port6), Some((&peers, &stats))).await {
            Some(nodes) => {
                tracing::info!("announced {info_hash} on port {port}: {nodes} node(s) stored it");
                let _ = events.send(TorrentEvent::Announced { nodes });
            }
            None => return,
        }
        if peers.is_closed() {
            return;
        }
        tokio::time::sleep(every).await;
    }
}

/// One announce round: a get_peers lookup (its peers go to `feed` when given), then
/// announce_peer to the closest nodes with their tokens; waits (bounded) for
/// acknowledgements. Returns how many nodes stored us; `None` if the node has stopped.
pub async fn announce_once(
    dht: &DhtHandle,
    info_hash: Id,
    port: u16,
    feed: Option<(&mpsc::Sender<(SocketAddr, PeerSource)>, &FeedStats)>,
) -> Option<usize> {
    announce_ports(dht, info_hash, (port, None), feed).await
}

/// [`announce_once`] with the IPv6 DHT told a port of its own (BEP 32 dual stack).
async fn announce_ports(
    dht: &DhtHandle,
    info_hash: Id,
    (port, port6): (u16, Option<u16>),
    feed: Option<(&mpsc::Sender<(SocketAddr, PeerSource)>, &FeedStats)>,
) -> Option<usize> {
    let mut stream = dht.announce_ports(info_hash, port, port6).ok()?;
    let deadline = tokio::time::Instant::now() + ANNOUNCE_WAIT;
    let mut ack_deadline = None;
    loop {
        let until = ack_deadline.unwrap_or(deadline).min(deadline);
        match tokio::time::timeout_at(until, stream.next_update()).await {
            Ok(Some(LookupUpdate::Done(s))) => {
                if let Some((_, stats)) = feed {
                    stats.lookup_done(s.stats.queried, s.stats.first_peer_hops);
                }
                if s.announced == 0 {
                    break;
                }
                ack_deadline = Some(tokio::time::Instant::now() + Duration::from_secs(3));
            }
            Ok(Some(LookupUpdate::AnnounceAcked(_))) => {
                let want = stream.summary().map_or(usize::MAX, |s| s.announced);
                if stream.acks().len() >= want {
                    break;
                }
            }
            Ok(Some(LookupUpdate::Peers(ps))) => {
                if let Some((tx, stats)) = feed {
                    for p in ps {
                        stats.saw_peer();
                        // try_send: an announce never waits on a busy torrent.
                        let _ = tx.try_send((p, PeerSource::Dht));
                    }
                }
            }
            // The stream ends once the acknowledgements are in or can no longer come.
            Ok(None) if stream.summary().is_some() => break,
            Ok(None) => return None,
            Err(_) => break,
        }
    }
    Some(stream.acks().len())
}
