//! Trackers as a peer source for one torrent, beside the DHT feed: announces `started` at
//! once, re-announces on the tracker's `interval` (earlier, never before `min interval`, while
//! short of peers), `completed` when the download completes, `stopped` when the torrent stops;
//! each round asks the BEP 12 tiers in order until one tracker answers. Every failure is one
//! log line; the torrent never stops because of a tracker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::handle::FeedStats;
use crate::engine::{PeerSource, Phase, Progress};
use crate::id::Id;
use crate::tracker::schedule::ScheduleConfig;
use crate::tracker::udp_proto::Retransmit;
use crate::tracker::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, Client, ClientConfig, Schedule, Tiers,
    TrackerUrl, NUMWANT,
};

/// `left` while the size is unknown (a magnet before its metadata): not 0, which would make
/// us a seeder in the tracker's eyes.
const UNKNOWN_LEFT: u64 = 1 << 40;
/// Longest wait for the `stopped` announce when a torrent stops.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// How a session talks to trackers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Intervals and back-off.
    pub schedule: ScheduleConfig,
    /// Longest time one HTTP request may take.
    pub http_timeout: Duration,
    /// UDP retransmission (BEP 15; tests use a shorter first timeout).
    pub udp: Retransmit,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            schedule: ScheduleConfig::default(),
            http_timeout: Duration::from_secs(30),
            udp: Retransmit::default(),
        }
    }
}

/// What a tracker feed needs.
pub(crate) struct TrackerFeed {
    pub tiers: Tiers,
    pub info_hash: Id,
    pub peer_id: Id,
    /// Our TCP listen address (the port is announced; the IP is the requests' source).
    pub listen: SocketAddr,
    pub peers: mpsc::Sender<(SocketAddr, PeerSource)>,
    pub progress: watch::Receiver<Progress>,
    pub stats: Arc<FeedStats>,
    pub config: TrackerConfig,
    /// Connected peers that count as enough (fewer: re-announce at `min interval`).
    pub enough_peers: usize,
    /// The torrent serves complete data from the start (no `completed` event, `left` 0).
    pub seeding: bool,
}

/// A running feed: signal `stop` and await `task` (it sends `stopped`, bounded).
pub(crate) struct Running {
    pub task: JoinHandle<()>,
    pub stop: watch::Sender<bool>,
}

impl Running {
    /// Asks the feed to announce `stopped` and end; returns the task to await.
    pub fn stop(self) -> JoinHandle<()> {
        self.stop.send_replace(true);
        self.task
    }
}

/// Starts the feed.
pub(crate) fn spawn(f: TrackerFeed) -> Running {
    let (stop, stop_rx) = watch::channel(false);
    Running {
        task: tokio::spawn(run(f, stop_rx)),
        stop,
    }
}

fn complete(p: &Progress) -> bool {
    matches!(p.phase, Phase::Done | Phase::Seeding)
}

fn request(f: &TrackerFeed, key: u32, event: AnnounceEvent) -> AnnounceRequest {
    let p = f.progress.borrow();
    let left = if f.seeding || complete(&p) {
        0
    } else if p.bytes_total > 0 {
        p.bytes_total.saturating_sub(p.bytes_done)
    } else {
        UNKNOWN_LEFT
    };
    AnnounceRequest {
        info_hash: f.info_hash,
        peer_id: f.peer_id,
        port: f.listen.port(),
        uploaded: p.uploaded,
        downloaded: p.downloaded,
        left,
        event,
        numwant: if event == AnnounceEvent::Stopped {
            0
        } else {
            NUMWANT
        },
        key,
    }
}

/// Asks the trackers in tier order until one answers.
async fn round(
    client: &mut Client,
    tiers: &mut Tiers,
    req: &AnnounceRequest,
) -> Option<(TrackerUrl, AnnounceResponse)> {
    for (pos, url) in tiers.order() {
        match client.announce(&url, req).await {
            Ok(r) => {
                tiers.promote(pos);
                return Some((url, r));
            }
            Err(e) => tracing::warn!(info_hash = %req.info_hash, "tracker {url}: {e}"),
        }
    }
    None
}

async fn run(mut f: TrackerFeed, mut stop: watch::Receiver<bool>) {
    let mut client = match Client::new(ClientConfig {
        local_ip: f.listen.ip(),
        http_timeout: f.config.http_timeout,
        udp: f.config.udp,
    }) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("trackers of {} unusable: {e}", f.info_hash);
            return;
        }
    };
    let key: u32 = rand::random();
    let mut sched = Schedule::new(f.config.schedule, Instant::now().into_std());
    let mut started_sent = false;
    let mut completed_sent = f.seeding;
    let mut last_good: Option<TrackerUrl> = None;
    loop {
        if *stop.borrow() {
            break;
        }
        let (is_complete, short) = {
            let p = f.progress.borrow();
            (complete(&p), p.peers < f.enough_peers)
        };
        let completed_now = started_sent && !completed_sent && is_complete;
        let due = Instant::from_std(sched.due_at(short && !is_complete));
        if !completed_now && Instant::now() < due {
            tokio::select! {
                _ = stop.changed() => break,
                r = f.progress.changed() => if r.is_err() { break },
                _ = tokio::time::sleep_until(due) => {}
            }
            continue;
        }
        let event = if !started_sent {
            AnnounceEvent::Started
        } else if completed_now {
            AnnounceEvent::Completed
        } else {
            AnnounceEvent::None
        };
        let req = request(&f, key, event);
        let answer = tokio::select! {
            _ = stop.changed() => break,
            a = round(&mut client, &mut f.tiers, &req) => a,
        };
        let now = Instant::now().into_std();
        let Some((url, r)) = answer else {
            sched.on_failure(now);
            tracing::warn!(
                "no tracker of {} answered ({} tried); next round in {:?}",
                f.info_hash,
                f.tiers.len(),
                sched.due_at(false).saturating_duration_since(now)
            );
            continue;
        };
        sched.on_answer(now, r.interval, r.min_interval);
        started_sent = true;
        if event == AnnounceEvent::Completed || (event == AnnounceEvent::Started && is_complete) {
            completed_sent = true;
        }
        if let Some(w) = &r.warning {
            tracing::warn!("tracker {url} warns: {w}");
        }
        if r.truncated {
            tracing::warn!(
                "tracker {url} sent more than {} peers; the rest were dropped",
                crate::tracker::MAX_PEERS
            );
        }
        tracing::info!(
            "tracker {url}: {} peer(s) for {} ({} seeders, {} leechers), next announce in {:?}",
            r.peers.len(),
            f.info_hash,
            r.seeders.map_or("?".into(), |n| n.to_string()),
            r.leechers.map_or("?".into(), |n| n.to_string()),
            sched.due_at(false).saturating_duration_since(now),
        );
        last_good = Some(url);
        for p in r.peers {
            if p == f.listen {
                continue;
            }
            f.stats.saw_peer();
            // try_send: a busy torrent drops addresses rather than stall the announcer.
            if let Err(mpsc::error::TrySendError::Closed(_)) =
                f.peers.try_send((p, PeerSource::Tracker))
            {
                return;
            }
        }
    }
    // Stopped: tell the tracker that last answered, briefly — first `completed` if the
    // download completed just as it stopped (the tracker counts downloads by it).
    let (true, Some(url)) = (started_sent, last_good) else {
        return;
    };
    let deadline = Instant::now() + STOP_WAIT;
    let mut events = vec![AnnounceEvent::Stopped];
    if !completed_sent && complete(&f.progress.borrow()) {
        events.insert(0, AnnounceEvent::Completed);
    }
    for event in events {
        let req = request(&f, key, event);
        match tokio::time::timeout_at(deadline, client.announce(&url, &req)).await {
            Ok(Ok(_)) => tracing::info!("tracker {url}: {event:?} {}", f.info_hash),
            // Warnings: the tracker keeps listing us for up to an interval.
            Ok(Err(e)) => tracing::warn!("tracker {url}: {event:?} announce failed: {e}"),
            Err(_) => {
                tracing::warn!("tracker {url}: no answer to {event:?} within {STOP_WAIT:?}");
                return;
            }
        }
    }
}
