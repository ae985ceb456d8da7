//! The per-torrent control loop: dials peers as they stream in (caps on total and half-open
//! connections, retries with back-off), turns fetched metadata into storage and a picker,
//! records hashed pieces (resume record batched, data synced first), broadcasts `have`,
//! runs the choker, bans peers that sent bad data, and reports progress and completion.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::choker::{Choker, PeerStat};
use super::conn;
use super::hasher::{self, HashOutcome, HashResult};
use super::peer::run_peer;
use super::picker::{PeerKey, Picker, PickerConfig};
use super::session::{FetchReport, Phase, Progress};
use super::torrent::{lock, Cmd, Event, Meta, Torrent};
use super::EngineError;
use crate::torrent::{Info, OpenMode, ResumeError, ResumeFile, Storage, VerifiedPiece};
use crate::wire::Handshake;

/// Dial bookkeeping for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AddrState {
    Queued,
    Dialing,
    Connected,
    /// Not connected; may be retried at the given time.
    Idle(Option<Instant>),
    Banned,
}

/// What a finished flush hands back.
type FlushDone = (ResumeFile, Result<(), ResumeError>);

/// A connection that lasted this long was useful: its address gets a fresh set of retries.
const LONG_LIVED: Duration = Duration::from_secs(60);

/// Inputs of a driver.
pub(crate) struct DriverParams {
    pub t: Arc<Torrent>,
    pub output_dir: PathBuf,
    pub progress: Option<watch::Sender<Progress>>,
    pub done: Option<oneshot::Sender<Result<FetchReport, EngineError>>>,
    pub seed_after: bool,
    pub dht_nodes: Option<mpsc::UnboundedSender<SocketAddr>>,
    pub seed: u64,
}

/// Driver state (the parts handlers mutate).
pub(crate) struct Driver {
    t: Arc<Torrent>,
    output_dir: PathBuf,
    progress: Option<watch::Sender<Progress>>,
    done: Option<oneshot::Sender<Result<FetchReport, EngineError>>>,
    seed_after: bool,
    dht_nodes: Option<mpsc::UnboundedSender<SocketAddr>>,
    rng_seed: u64,
    started: Instant,
    first_peer: Option<Instant>,
    meta_at: Option<Instant>,
    finished_at: Option<Instant>,
    addrs: HashMap<SocketAddr, (AddrState, u32)>,
    queue: VecDeque<SocketAddr>,
    half_open: usize,
    peers_open: bool,
    key_addr: HashMap<PeerKey, SocketAddr>,
    /// When each connected address came up: a connection that lasted resets its retry count,
    /// one that dies young (e.g. a peer that never answers) does not, so retries stay bounded.
    up_since: HashMap<SocketAddr, Instant>,
    peers_seen: usize,
    choker: Choker,
    counts: HashMap<PeerKey, (u64, u64, u64, u64)>,
    last_rates: Instant,
    resume: Option<ResumeFile>,
    pending_verified: Vec<VerifiedPiece>,
    last_flush: Instant,
    failed: HashMap<u32, Vec<(PeerKey, [u8; 20])>>,
    strikes: HashMap<SocketAddr, u32>,
    banned: usize,
    hash_failures: u32,
    pieces_resumed: u32,
    fetched_bytes: u64,
    down_rate: f64,
    up_rate: f64,
    last_down: u64,
    last_up: u64,
}

impl Driver {
    /// A driver for `p.t`.
    pub(crate) fn new(p: DriverParams) -> Driver {
        let now = Instant::now();
        Driver {
            choker: Choker::new(p.t.cfg.choker.clone(), p.seed ^ 0x9E37_79B9),
            t: p.t,
            output_dir: p.output_dir,
            progress: p.progress,
            done: p.done,
            seed_after: p.seed_after,
            dht_nodes: p.dht_nodes,
            rng_seed: p.seed,
            started: now,
            first_peer: None,
            meta_at: None,
            finished_at: None,
            addrs: HashMap::new(),
            queue: VecDeque::new(),
            half_open: 0,
            peers_open: true,
            key_addr: HashMap::new(),
            up_since: HashMap::new(),
            peers_seen: 0,
            counts: HashMap::new(),
            last_rates: now,
            resume: None,
            pending_verified: Vec::new(),
            last_flush: now,
            failed: HashMap::new(),
            strikes: HashMap::new(),
            banned: 0,
            hash_failures: 0,
            pieces_resumed: 0,
            fetched_bytes: 0,
            down_rate: 0.0,
            up_rate: 0.0,
            last_down: 0,
            last_up: 0,
        }
    }

    fn is_complete(&self) -> bool {
        self.t
            .state()
            .picker
            .as_ref()
            .is_some_and(Picker::is_complete)
    }

    /// Makes metadata live: opens (creates) storage, loads the resume record, builds the
    /// picker, and wakes the peers. For downloads.
    pub(crate) async fn setup_download(
        &mut self,
        info: Info,
        info_bytes: Vec<u8>,
    ) -> Result<(), EngineError> {
        let dir = self.output_dir.clone();
        let ih = self.t.info_hash;
        let (info, storage, resume) = tokio::task::spawn_blocking(move || {
            let storage = Storage::open(&dir, &info, OpenMode::Create)?;
            let n = storage.layout().num_pieces();
            let resume = ResumeFile::load(&ResumeFile::default_path(&dir, &info), ih, n);
            Ok::<_, EngineError>((info, storage, resume))
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let layout = storage.layout().clone();
        let cfg = &self.t.cfg;
        let piece_len = layout.piece_length().max(1);
        let max_partials = (cfg.piece_buffer_budget / piece_len).clamp(4, 1024) as usize;
        let mut picker = Picker::new(
            layout,
            PickerConfig {
                max_partials,
                ..PickerConfig::default()
            },
            self.rng_seed,
        );
        // Trust the record: it is only written after the data it covers was synced.
        for p in resume.verified().iter() {
            picker.set_have(p);
        }
        self.pieces_resumed = picker.have_count();
        let threads = hasher::thread_count(cfg.hash_threads);
        let capacity = ((cfg.piece_buffer_budget / 4) / piece_len).clamp(2, 64) as usize;
        *lock(&self.t.hash_tx) = Some(hasher::spawn(threads, capacity));
        self.resume = Some(resume);
        self.t.state().picker = Some(picker);
        let _ = self
            .t
            .meta
            .set(Arc::new(Meta::new(info, info_bytes, storage)));
        self.t.meta_ready.send_replace(true);
        self.meta_at = Some(Instant::now());
        Ok(())
    }

    /// Makes metadata live for seeding complete data (every piece present).
    pub(crate) fn setup_seed(&mut self, meta: Meta) {
        let mut picker = Picker::new(meta.layout.clone(), PickerConfig::default(), self.rng_seed);
        for p in 0..meta.layout.num_pieces() {
            picker.set_have(p);
        }
        self.t.state().picker = Some(picker);
        let _ = self.t.meta.set(Arc::new(meta));
        self.t.meta_ready.send_replace(true);
        self.meta_at = Some(Instant::now());
        self.finished_at = Some(Instant::now());
    }

    /// Runs until the torrent shuts down (or, for a fetch without `seed_after`, until done).
    pub(crate) async fn run(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
        mut peers: Option<mpsc::Receiver<SocketAddr>>,
    ) {
        let res = self.run_inner(&mut events, &mut peers).await;
        if let Err(e) = res {
            tracing::debug!(error = %e, "torrent driver failed");
            if let Some(done) = self.done.take() {
                let _ = done.send(Err(e));
            }
        } else if let Some(done) = self.done.take() {
            let _ = done.send(Err(EngineError::Cancelled));
        }
        self.t.shutdown.send_replace(true);
        *lock(&self.t.hash_tx) = None;
    }

    async fn run_inner(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        peers: &mut Option<mpsc::Receiver<SocketAddr>>,
    ) -> Result<(), EngineError> {
        let mut shutdown = self.t.shutdown.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushing: Option<JoinHandle<FlushDone>> = None;
        if peers.is_none() {
            self.peers_open = false;
        }
        loop {
            if *shutdown.borrow_and_update() {
                return Ok(());
            }
            if self.done.is_some() || self.finished_at.is_none() {
                self.dial_more();
            }
            self.maybe_flush(&mut flushing);
            if self.try_finish(&flushing)? {
                return Ok(());
            }
            self.check_out_of_peers()?;
            let has_flush = flushing.is_some();
            let open = self.peers_open;
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await?,
                    None => return Ok(()),
                },
                addr = async {
                    match peers.as_mut() {
                        Some(p) => p.recv().await,
                        None => std::future::pending().await,
                    }
                }, if open => match addr {
                    Some(a) => self.add_addr(a),
                    None => self.peers_open = false,
                },
                res = async {
                    match flushing.as_mut() {
                        Some(h) => h.await,
                        None => std::future::pending().await,
                    }
                }, if has_flush => {
                    flushing = None;
                    let (mut resume, r) = res.map_err(|e| EngineError::Internal(e.to_string()))?;
                    r?;
                    for v in self.pending_verified.drain(..) {
                        resume.mark_verified(v);
                    }
                    self.resume = Some(resume);
                }
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    /// Starts a background flush when due (data synced, then record written).
    fn maybe_flush(&mut self, flushing: &mut Option<JoinHandle<FlushDone>>) {
        if flushing.is_some() {
            return;
        }
        let due =
            self.last_flush.elapsed() >= self.t.cfg.resume_flush_interval || self.is_complete();
        let Some(resume) = self.resume.as_ref() else {
            return;
        };
        if !due || resume.pending() == 0 {
            return;
        }
        let Some(meta) = self.t.meta().cloned() else {
            return;
        };
        let Some(mut resume) = self.resume.take() else {
            return;
        };
        self.last_flush = Instant::now();
        *flushing = Some(tokio::task::spawn_blocking(move || {
            let r = resume.flush(&meta.storage);
            (resume, r)
        }));
    }

    /// Completes the fetch once every piece is verified and durable. Returns true when the
    /// driver should stop.
    fn try_finish(
        &mut self,
        flushing: &Option<JoinHandle<FlushDone>>,
    ) -> Result<bool, EngineError> {
        if self.done.is_none() || !self.is_complete() {
            return Ok(false);
        }
        let durable = flushing.is_none()
            && self.pending_verified.is_empty()
            && self.resume.as_ref().is_some_and(|r| r.pending() == 0);
        if !durable {
            return Ok(false);
        }
        let now = Instant::now();
        self.finished_at = Some(now);
        let report = self.report(now);
        self.publish(Phase::Done);
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(report));
        }
        // Stop dialing; close connections to other seeds.
        self.peers_open = false;
        self.queue.clear();
        *lock(&self.t.hash_tx) = None;
        Ok(!self.seed_after)
    }

    fn report(&self, now: Instant) -> FetchReport {
        let meta = self.t.meta();
        let start = match (self.meta_at, self.first_peer) {
            (Some(m), Some(f)) => m.max(f),
            (Some(m), None) => m,
            _ => self.started,
        };
        let secs = now.duration_since(start).as_secs_f64().max(1e-6);
        FetchReport {
            info_hash: self.t.info_hash,
            name: meta.map(|m| m.info.name.clone()).unwrap_or_default(),
            bytes: meta.map_or(0, |m| m.layout.total_length()),
            pieces: meta.map_or(0, |m| m.layout.num_pieces()),
            elapsed: now.duration_since(self.started),
            first_peer: self.first_peer.map(|t| t.duration_since(self.started)),
            metadata: self.meta_at.map(|t| t.duration_since(self.started)),
            peers_connected: self.peers_seen,
            fetched_bytes: self.fetched_bytes,
            downloaded_bytes: self.t.downloaded.load(Ordering::Relaxed),
            pieces_resumed: self.pieces_resumed,
            hash_failures: self.hash_failures,
            peers_banned: self.banned,
            download_rate: self.fetched_bytes as f64 / secs,
        }
    }

    fn check_out_of_peers(&self) -> Result<(), EngineError> {
        if self.done.is_none() || self.peers_open || self.half_open > 0 || !self.queue.is_empty() {
            return Ok(());
        }
        if !self.t.state().peers.is_empty() {
            return Ok(());
        }
        let retry_pending = self
            .addrs
            .values()
            .any(|(s, _)| matches!(s, AddrState::Idle(Some(_)) | AddrState::Queued));
        if retry_pending || self.is_complete() {
            return Ok(());
        }
        Err(EngineError::OutOfPeers)
    }

    fn add_addr(&mut self, a: SocketAddr) {
        if self.finished_at.is_some() {
            return;
        }
        match self.addrs.get(&a) {
            Some((AddrState::Idle(_), _)) | None => {
                if self.t.state().banned.contains(&a) {
                    return;
                }
                self.addrs.insert(a, (AddrState::Queued, 0));
                self.queue.push_back(a);
            }
            _ => {}
        }
    }

    fn dial_more(&mut self) {
        let cfg = Arc::clone(&self.t.cfg);
        while self.half_open < cfg.max_half_open {
            let connected = self.t.state().peers.len();
            if connected + self.half_open >= cfg.max_peers {
                return;
            }
            let Some(addr) = self.queue.pop_front() else {
                return;
            };
            let attempts = self.addrs.get(&addr).map_or(0, |(_, n)| *n);
            self.addrs.insert(addr, (AddrState::Dialing, attempts));
            self.half_open += 1;
            let t = Arc::clone(&self.t);
            tokio::spawn(async move {
                let hs = Handshake::new(t.info_hash, t.peer_id);
                let res = async {
                    let s = conn::connect(addr, t.cfg.connect_timeout, t.cfg.socket_buffer).await?;
                    conn::handshake_outgoing(s, hs, t.cfg.handshake_timeout).await
                }
                .await;
                match res {
                    Ok((reader, wr, theirs)) => {
                        let _ = t.events.send(Event::DialDone { addr, ok: true });
                        let _ = run_peer(Arc::clone(&t), reader, wr, theirs, addr).await;
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "dial failed");
                        let _ = t.events.send(Event::DialDone { addr, ok: false });
                    }
                }
            });
        }
    }

    fn schedule_retry(&mut self, addr: SocketAddr) {
        let cfg = Arc::clone(&self.t.cfg);
        let complete = self.finished_at.is_some();
        if let Some((state, attempts)) = self.addrs.get_mut(&addr) {
            if *state == AddrState::Banned {
                return;
            }
            *attempts += 1;
            *state = if *attempts <= cfg.reconnect_attempts && !complete {
                AddrState::Idle(Some(Instant::now() + cfg.reconnect_delay * *attempts))
            } else {
                AddrState::Idle(None)
            };
        }
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), EngineError> {
        match ev {
            Event::PeerUp { key, addr } => {
                self.first_peer.get_or_insert_with(Instant::now);
                self.peers_seen += 1;
                self.key_addr.insert(key, addr);
                if let Some((s, _)) = self.addrs.get_mut(&addr) {
                    *s = AddrState::Connected;
                }
                self.up_since.insert(addr, Instant::now());
                self.publish_current();
            }
            Event::PeerDown { key, addr, fatal } => {
                self.choker.remove(key);
                self.counts.remove(&key);
                let lasted = self
                    .up_since
                    .remove(&addr)
                    .is_some_and(|t| t.elapsed() >= LONG_LIVED);
                if let Some((s, n)) = self.addrs.get_mut(&addr) {
                    if lasted {
                        *n = 0;
                    }
                    if *s == AddrState::Connected {
                        *s = AddrState::Idle(None);
                        if fatal {
                            if let Some((_, n)) = self.addrs.get_mut(&addr) {
                                *n = u32::MAX / 2;
                            }
                        }
                        self.schedule_retry(addr);
                    }
                }
                self.update_choker();
            }
            Event::DialDone { addr, ok } => {
                self.half_open = self.half_open.saturating_sub(1);
                if !ok {
                    if let Some((s, _)) = self.addrs.get_mut(&addr) {
                        *s = AddrState::Idle(None);
                    }
                    self.schedule_retry(addr);
                } else if let Some((s, _)) = self.addrs.get_mut(&addr) {
                    if *s == AddrState::Dialing {
                        *s = AddrState::Connected;
                    }
                }
            }
            Event::Interest => self.update_choker(),
            Event::Metadata(bytes) => {
                if self.t.meta().is_none() {
                    let info = Info::from_bytes(&bytes)?;
                    tracing::debug!(name = %info.name, "metadata received");
                    self.setup_download(info, bytes).await?;
                }
            }
            Event::Ban(addr) => self.ban_addr(addr),
            Event::Hashed(r) => self.on_hashed(r)?,
            Event::DhtPort(a) => {
                if let Some(tx) = &self.dht_nodes {
                    let _ = tx.send(a);
                }
            }
        }
        Ok(())
    }

    fn ban_addr(&mut self, addr: SocketAddr) {
        let mut st = self.t.state();
        if st.banned.insert(addr) {
            self.banned += 1;
            tracing::info!(%addr, "peer banned");
        }
        for p in st.peers.values() {
            if p.addr == addr {
                let _ = p.tx.send(Cmd::Close("banned"));
            }
        }
        // Whatever it delivered into unfinished pieces is not trusted either.
        let keys: Vec<PeerKey> = self
            .key_addr
            .iter()
            .filter(|(_, a)| **a == addr)
            .map(|(k, _)| *k)
            .collect();
        if let Some(p) = st.picker.as_mut() {
            for k in keys {
                p.forget_peer(k);
            }
        }
        drop(st);
        self.addrs.insert(addr, (AddrState::Banned, 0));
        self.queue.retain(|a| *a != addr);
    }

    fn ban_key(&mut self, key: PeerKey) {
        if let Some(&addr) = self.key_addr.get(&key) {
            self.ban_addr(addr);
        }
    }

    fn on_hashed(&mut self, r: HashResult) -> Result<(), EngineError> {
        let piece = r.piece;
        match r.outcome {
            HashOutcome::Passed(v, block_hashes) => {
                let (size, complete) = {
                    let mut st = self.t.state();
                    let Some(p) = st.picker.as_mut() else {
                        return Ok(());
                    };
                    p.piece_passed(piece);
                    let size = p.layout().piece_size(piece).unwrap_or(0);
                    let complete = p.is_complete();
                    for e in st.peers.values() {
                        let _ = e.tx.send(Cmd::Have(piece));
                    }
                    (size, complete)
                };
                self.fetched_bytes += u64::from(size);
                match self.resume.as_mut() {
                    Some(res) => {
                        res.mark_verified(v);
                    }
                    None => self.pending_verified.push(v),
                }
                // Smart-ban: whoever sent a block that differs from the good one lied.
                if let (Some(good), Some(bad)) = (block_hashes, self.failed.remove(&piece)) {
                    let mut liars: Vec<PeerKey> = bad
                        .iter()
                        .enumerate()
                        .filter(|(i, (_, h))| good.get(*i).is_some_and(|g| g != h))
                        .map(|(_, (k, _))| *k)
                        .collect();
                    liars.sort_unstable();
                    liars.dedup();
                    for k in liars {
                        self.ban_key(k);
                    }
                }
                if complete {
                    self.publish(Phase::Finishing);
                }
            }
            HashOutcome::Failed(hashes) => {
                self.hash_failures += 1;
                let senders = {
                    let mut st = self.t.state();
                    st.picker
                        .as_mut()
                        .map(|p| p.piece_failed(piece))
                        .unwrap_or_default()
                };
                tracing::info!(piece, "piece failed its hash check");
                let mut distinct = senders.clone();
                distinct.sort_unstable();
                distinct.dedup();
                let already_banned = {
                    let st = self.t.state();
                    distinct
                        .iter()
                        .any(|k| self.key_addr.get(k).is_some_and(|a| st.banned.contains(a)))
                };
                if let [only] = distinct.as_slice() {
                    // One peer sent every block: certainly the culprit.
                    self.ban_key(*only);
                } else if already_banned {
                    // A banned peer's data explains the failure; the others keep their trust
                    // (smart-ban below still compares blocks once the piece passes).
                } else {
                    for k in &distinct {
                        if let Some(&addr) = self.key_addr.get(k) {
                            let s = self.strikes.entry(addr).or_insert(0);
                            *s += 1;
                            if *s >= 2 {
                                self.ban_addr(addr);
                            }
                        }
                    }
                }
                self.failed
                    .insert(piece, senders.into_iter().zip(hashes).collect());
            }
            HashOutcome::Error(e) => return Err(e.into()),
        }
        Ok(())
    }

    fn update_choker(&mut self) {
        let seeding = self.is_complete();
        let stats: Vec<PeerStat> = {
            let st = self.t.state();
            st.peers
                .iter()
                .map(|(&key, e)| {
                    let (_, _, down, up) = self.counts.get(&key).copied().unwrap_or_default();
                    PeerStat {
                        key,
                        interested: e.counters.interested.load(Ordering::Relaxed),
                        download_rate: down,
                        upload_rate: up,
                        ..PeerStat::default()
                    }
                })
                .collect()
        };
        let changes = self.choker.update(Instant::now(), &stats, seeding);
        let st = self.t.state();
        for (k, unchoke) in changes {
            if let Some(e) = st.peers.get(&k) {
                let _ = e.tx.send(Cmd::Choke(!unchoke));
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Retries that are due.
        let due: Vec<SocketAddr> = self
            .addrs
            .iter()
            .filter(|(_, (s, _))| matches!(s, AddrState::Idle(Some(t)) if *t <= now))
            .map(|(a, _)| *a)
            .collect();
        for a in due {
            if self.finished_at.is_none() {
                if let Some((s, _)) = self.addrs.get_mut(&a) {
                    *s = AddrState::Queued;
                }
                self.queue.push_back(a);
            } else if let Some((s, _)) = self.addrs.get_mut(&a) {
                *s = AddrState::Idle(None);
            }
        }
        // Per-peer and total rates.
        let dt = now.duration_since(self.last_rates).as_secs_f64();
        if dt >= 0.4 {
            let st = self.t.state();
            for (&k, e) in st.peers.iter() {
                let down = e.counters.down.load(Ordering::Relaxed);
                let up = e.counters.up.load(Ordering::Relaxed);
                let c = self.counts.entry(k).or_insert((down, up, 0, 0));
                c.2 = ((down - c.0) as f64 / dt) as u64;
                c.3 = ((up - c.1) as f64 / dt) as u64;
                c.0 = down;
                c.1 = up;
            }
            drop(st);
            let down = self.t.downloaded.load(Ordering::Relaxed);
            let up = self.t.uploaded.load(Ordering::Relaxed);
            self.down_rate = (down - self.last_down) as f64 / dt;
            self.up_rate = (up - self.last_up) as f64 / dt;
            self.last_down = down;
            self.last_up = up;
            self.last_rates = now;
        }
        self.update_choker();
        self.publish_current();
    }

    fn publish_current(&self) {
        let phase = if self.finished_at.is_some() {
            Phase::Seeding
        } else if self.t.meta().is_some() {
            Phase::Downloading
        } else if self.first_peer.is_some() {
            Phase::FetchingMetadata
        } else {
            Phase::FindingPeers
        };
        self.publish(phase);
    }

    fn publish(&self, phase: Phase) {
        let Some(tx) = &self.progress else {
            return;
        };
        let (done, total, bytes_done) = {
            let st = self.t.state();
            match st.picker.as_ref() {
                Some(p) => {
                    let l = p.layout();
                    let mut bytes = 0u64;
                    if p.is_complete() {
                        bytes = l.total_length();
                    } else {
                        for i in 0..l.num_pieces() {
                            if p.has(i) {
                                bytes += u64::from(l.piece_size(i).unwrap_or(0));
                            }
                        }
                    }
                    (p.have_count(), l.num_pieces(), bytes)
                }
                None => (0, 0, 0),
            }
        };
        let meta = self.t.meta();
        let peers = self.t.state().peers.len();
        tx.send_replace(Progress {
            phase,
            name: meta.map(|m| m.info.name.clone()),
            pieces_done: done,
            pieces_total: total,
            bytes_done,
            bytes_total: meta.map_or(0, |m| m.layout.total_length()),
            peers,
            download_rate: self.down_rate,
            upload_rate: self.up_rate,
            elapsed: self.started.elapsed(),
        });
    }
}
