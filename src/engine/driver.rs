//! The per-torrent control loop: dials peers from the bounded peer list (caps on total and
//! half-open connections, per-address back-off), turns fetched metadata into storage and a
//! picker, records hashed pieces (resume record batched, data synced first), broadcasts
//! `have`, runs the choker and PEX, attributes bad data (trust points and smart-ban, bans per
//! IP), and reports progress and completion.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::choker::{Choker, PeerStat};
use super::conn;
use super::events::{Cmd, Event, HashOutcome, HashResult};
use super::hasher;
use super::meta::Meta;
use super::peer::run_peer;
use super::peer_list::{FailKind, PeerList, PeerSource};
use super::picker::{PeerKey, Picker, PickerConfig};
use super::report::{FetchReport, Phase, Progress};
use super::torrent::{Torrent, MAX_BANNED};
use super::trust::{Trust, Verdict};
use super::EngineError;
use crate::sync::lock;
use crate::torrent::{
    plan_check, wanted_pieces, Bitfield, CheckPlan, FileSelection, Info, OpenMode, ResumeError,
    ResumeFile, Storage, VerifiedPiece,
};
use crate::wire::Handshake;

/// What a finished flush hands back.
type FlushDone = (ResumeFile, Result<(), ResumeError>);

/// How often the peers' addresses are offered to every peer for PEX (each peer task sends at
/// most one message a minute; this only bounds how stale the list it sends can be).
const PEX_EVERY: Duration = Duration::from_secs(5);

/// Bytes hashed per blocking task while checking existing data: progress is published and a
/// stop noticed between batches.
const CHECK_BATCH_BYTES: u64 = 16 * 1024 * 1024;

/// A download whose storage is open and whose existing data is still to be checked.
struct Setup {
    info: Info,
    info_bytes: Vec<u8>,
    storage: Storage,
    resume: ResumeFile,
    plan: CheckPlan,
    /// Pieces the file selection needs (`None`: all).
    wanted: Option<Bitfield>,
}

/// Connection ids remembered with their IP, for attributing pieces that fail after the peer
/// left (bounded: ids are per connection, and connections come and go).
const KEY_IPS: usize = 4096;
/// Most other addresses remembered per connection (see `Driver::aliases`).
const MAX_ALIASES: usize = 4;

/// Inputs of a driver.
pub(crate) struct DriverParams {
    pub t: Arc<Torrent>,
    pub output_dir: PathBuf,
    pub progress: watch::Sender<Progress>,
    pub done: Option<oneshot::Sender<Result<FetchReport, EngineError>>>,
    pub seed_after: bool,
    pub dht_nodes: Option<mpsc::UnboundedSender<SocketAddr>>,
    pub seed: u64,
    /// Hash all existing data at start, whatever the resume record says.
    pub recheck: bool,
    /// Which files to download.
    pub files: FileSelection,
    /// Complete as soon as the metadata is known (no storage).
    pub metadata_only: bool,
}

/// Driver state (the parts handlers mutate).
pub(crate) struct Driver {
    t: Arc<Torrent>,
    output_dir: PathBuf,
    progress: watch::Sender<Progress>,
    done: Option<oneshot::Sender<Result<FetchReport, EngineError>>>,
    seed_after: bool,
    dht_nodes: Option<mpsc::UnboundedSender<SocketAddr>>,
    rng_seed: u64,
    recheck: bool,
    files: FileSelection,
    metadata_only: bool,
    /// With `metadata_only`: the metadata, once known.
    listed: Option<Arc<Info>>,
    /// Bytes in the pieces the selection needs (`None`: every piece).
    wanted_bytes: Option<u64>,
    /// Storage opened, existing data not checked yet (done first thing in `run`).
    setup: Option<Setup>,
    started: Instant,
    first_peer: Option<Instant>,
    meta_at: Option<Instant>,
    finished_at: Option<Instant>,
    peers: PeerList,
    half_open: usize,
    /// A peer source may still send addresses (else "out of peers" can be decided).
    peers_open: bool,
    /// Connection id → (remote address, dialable address, connected since).
    conns: HashMap<PeerKey, (SocketAddr, Option<SocketAddr>, Instant)>,
    /// Connection id → other addresses of the same peer (its BEP 7 `ipv6`, a deduplicated
    /// dial): marked connected in the peer list while the connection lasts, so the peer
    /// is not dialed twice; at most [`MAX_ALIASES`] each.
    aliases: HashMap<PeerKey, Vec<SocketAddr>>,
    key_ips: LruCache<PeerKey, IpAddr>,
    peers_seen: usize,
    pex_learnt: usize,
    choker: Choker,
    /// Per connection: last (valid_down, up) totals and the rates from them.
    counts: HashMap<PeerKey, (u64, u64, u64, u64)>,
    last_rates: Instant,
    last_pex: Instant,
    resume: Option<ResumeFile>,
    pending_verified: Vec<VerifiedPiece>,
    last_flush: Instant,
    failed: HashMap<u32, Vec<(PeerKey, [u8; 20])>>,
    trust: Trust,
    banned: usize,
    hash_failures: u32,
    pieces_resumed: u32,
    pieces_checked: u32,
    pieces_fetched: u32,
    fetched_bytes: u64,
    uploaded_at_done: Option<u64>,
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
            peers: PeerList::new(p.t.cfg.max_known_peers)
                .with_base_backoff(p.t.cfg.reconnect_delay),
            t: p.t,
            output_dir: p.output_dir,
            progress: p.progress,
            done: p.done,
            seed_after: p.seed_after,
            dht_nodes: p.dht_nodes,
            rng_seed: p.seed,
            recheck: p.recheck,
            files: p.files,
            metadata_only: p.metadata_only,
            listed: None,
            wanted_bytes: None,
            setup: None,
            started: now,
            first_peer: None,
            meta_at: None,
            finished_at: None,
            half_open: 0,
            peers_open: true,
            conns: HashMap::new(),
            aliases: HashMap::new(),
            key_ips: LruCache::new(std::num::NonZeroUsize::MIN.saturating_add(KEY_IPS - 1)),
            peers_seen: 0,
            pex_learnt: 0,
            counts: HashMap::new(),
            last_rates: now,
            last_pex: now,
            resume: None,
            pending_verified: Vec::new(),
            last_flush: now,
            failed: HashMap::new(),
            trust: Trust::new(KEY_IPS),
            banned: 0,
            hash_failures: 0,
            pieces_resumed: 0,
            pieces_checked: 0,
            pieces_fetched: 0,
            fetched_bytes: 0,
            uploaded_at_done: None,
            down_rate: 0.0,
            up_rate: 0.0,
            last_down: 0,
            last_up: 0,
        }
    }

    fn is_complete(&self) -> bool {
        self.t.is_complete()
    }

    /// Opens (creates) storage, loads the resume record and compares it with the files found
    /// (which pieces it still vouches for, which must be hashed again). Quick: no piece is
    /// read here; [`Driver::check_and_start`] does that. For downloads.
    pub(crate) async fn setup_download(
        &mut self,
        info: Info,
        info_bytes: Vec<u8>,
    ) -> Result<(), EngineError> {
        let dir = self.output_dir.clone();
        let ih = self.t.info_hash;
        let recheck = self.recheck;
        let files = self.files.clone();
        let setup = tokio::task::spawn_blocking(move || {
            let selected = if files.is_all() {
                None
            } else {
                Some(files.resolve(&info)?)
            };
            let storage =
                Storage::open_selected(&dir, &info, OpenMode::Create, selected.as_deref())?;
            let wanted = selected
                .as_deref()
                .map(|s| wanted_pieces(storage.layout(), s));
            let n = storage.layout().num_pieces();
            let resume = ResumeFile::load(&ResumeFile::default_path(&dir, &info), ih, n);
            let plan = plan_check(
                storage.layout(),
                storage.found(),
                resume.verified(),
                resume.stamps(),
                recheck,
            );
            Ok::<_, EngineError>(Setup {
                info,
                info_bytes,
                storage,
                resume,
                plan,
                wanted,
            })
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        self.setup = Some(setup);
        Ok(())
    }

    /// Hashes the existing data the record cannot vouch for (off the async workers, in
    /// batches, publishing [`Phase::Checking`] progress), then makes the metadata live:
    /// builds the picker with every piece known good, starts the hashers and wakes the peers.
    /// Nothing is requested from peers before the check ends, so a piece found good on disk
    /// is never fetched.
    async fn check_and_start(&mut self) -> Result<(), EngineError> {
        let Some(Setup {
            info,
            info_bytes,
            mut storage,
            mut resume,
            plan,
            wanted,
        }) = self.setup.take()
        else {
            return Ok(());
        };
        let layout = storage.layout().clone();
        // With a file selection, only the wanted pieces are checked: the others may lie in
        // the sparse parts file, and hashing gigabytes of its holes would find nothing.
        let mut to_check = plan.to_check;
        if let Some(w) = &wanted {
            to_check.retain(|&p| w.get(p));
        }
        let total = u32::try_from(to_check.len()).unwrap_or(u32::MAX);
        let mut good = plan.trusted.clone();
        if !plan.changed_files.is_empty() {
            tracing::info!(
                files = plan.changed_files.len(),
                pieces = total,
                trusted = good.count(),
                "files changed since the resume record (or have none): checking their pieces"
            );
        }
        resume.adopt(plan.trusted, storage.found());
        let per_batch = (CHECK_BATCH_BYTES / layout.piece_length().max(1)).max(1) as usize;
        let mut checked = 0u32;
        self.publish_checking(&info.name, &layout, &good, checked, total);
        for batch in to_check.chunks(per_batch) {
            if self.t.is_shutdown() {
                return Err(EngineError::Cancelled);
            }
            let batch = batch.to_vec();
            let (s, r) = tokio::task::spawn_blocking(move || {
                let mut ok = Vec::new();
                for &p in &batch {
                    match storage.verify_piece(p) {
                        Ok(Some(v)) => ok.push(v),
                        Ok(None) => {}
                        Err(e) => return (storage, Err(e), batch.len()),
                    }
                }
                (storage, Ok(ok), batch.len())
            })
            .await
            .map(|(s, r, n)| {
                checked = checked.saturating_add(n as u32);
                (s, r)
            })
            .map_err(|e| EngineError::Internal(e.to_string()))?;
            storage = s;
            for v in r? {
                good.set(v.index(), true);
                resume.mark_verified(v);
            }
            self.publish_checking(&info.name, &layout, &good, checked, total);
        }
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
        if let Some(w) = &wanted {
            picker.set_wanted(w);
            self.wanted_bytes = Some(
                w.iter()
                    .map(|p| u64::from(picker.layout().piece_size(p).unwrap_or(0)))
                    .sum(),
            );
            tracing::info!(
                pieces = picker.wanted_count(),
                of = picker.num_pieces(),
                "downloading the selected files only"
            );
        }
        // Trusted pieces: recorded after their data was synced, files unchanged since.
        // Checked pieces: hashed from disk just now.
        for p in good.iter() {
            picker.set_have(p);
        }
        self.pieces_resumed = picker.have_count();
        self.pieces_checked = total;
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

    /// Progress while existing data is hashed.
    fn publish_checking(
        &self,
        name: &str,
        layout: &crate::torrent::Layout,
        good: &Bitfield,
        checked: u32,
        total: u32,
    ) {
        let bytes_done = good
            .iter()
            .map(|p| u64::from(layout.piece_size(p).unwrap_or(0)))
            .sum();
        self.progress.send_replace(Progress {
            phase: Phase::Checking,
            name: Some(name.to_string()),
            pieces_done: good.count(),
            pieces_total: layout.num_pieces(),
            bytes_done,
            bytes_total: layout.total_length(),
            check_done: checked,
            check_total: total,
            elapsed: self.started.elapsed(),
            ..Progress::default()
        });
    }

    /// Makes metadata live for seeding existing data: every piece, or with `have` only those
    /// (a partial seed serves what it has and requests nothing).
    pub(crate) fn setup_seed(&mut self, meta: Meta, have: Option<Vec<VerifiedPiece>>) {
        let mut picker = Picker::new(meta.layout.clone(), PickerConfig::default(), self.rng_seed);
        match have {
            Some(have) => {
                for v in have {
                    picker.set_have(v.index());
                }
            }
            None => {
                for p in 0..meta.layout.num_pieces() {
                    picker.set_have(p);
                }
            }
        }
        if !picker.is_complete() {
            picker.set_serve_only(true);
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
        mut peers: mpsc::Receiver<(SocketAddr, PeerSource)>,
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
        let mut last = self.progress.borrow().clone();
        last.phase = if self.finished_at.is_some() && self.done.is_none() {
            last.phase
        } else {
            Phase::Paused
        };
        last.uploaded = self.t.uploaded.load(Ordering::Relaxed);
        self.progress.send_replace(last);
    }

    async fn run_inner(
        &mut self,
        events: &mut mpsc::UnboundedReceiver<Event>,
        peers: &mut mpsc::Receiver<(SocketAddr, PeerSource)>,
    ) -> Result<(), EngineError> {
        // A .torrent's existing data is checked before anything else (a magnet's once its
        // metadata arrives).
        self.check_and_start().await?;
        let mut shutdown = self.t.shutdown.subscribe();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flushing: Option<JoinHandle<FlushDone>> = None;
        loop {
            if *shutdown.borrow_and_update() {
                return self.final_flush(flushing).await;
            }
            if self.finished_at.is_none() {
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
                _ = shutdown.changed() => return self.final_flush(flushing).await,
                ev = events.recv() => match ev {
                    Some(ev) => self.on_event(ev).await?,
                    None => return Ok(()),
                },
                addr = peers.recv(), if open => match addr {
                    Some((a, source)) => self.add_addr(a, source),
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

    /// On a stop (pause, Ctrl-C, removal): waits for a flush in progress, then records every
    /// piece verified since, so a restart fetches none of them again.
    async fn final_flush(
        &mut self,
        flushing: Option<JoinHandle<FlushDone>>,
    ) -> Result<(), EngineError> {
        if let Some(h) = flushing {
            let (resume, r) = h.await.map_err(|e| EngineError::Internal(e.to_string()))?;
            self.resume = Some(resume);
            r?;
        }
        let (Some(mut resume), Some(meta)) = (self.resume.take(), self.t.meta().cloned()) else {
            return Ok(());
        };
        for v in self.pending_verified.drain(..) {
            resume.mark_verified(v);
        }
        if resume.pending() == 0 {
            self.resume = Some(resume);
            return Ok(());
        }
        let (resume, r) = tokio::task::spawn_blocking(move || {
            let r = resume.flush(&meta.storage);
            (resume, r)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.resume = Some(resume);
        Ok(r?)
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
        if self.metadata_only {
            if self.listed.is_none() {
                return Ok(false);
            }
            let now = Instant::now();
            self.finished_at = Some(now);
            let report = self.report(now);
            if let Some(done) = self.done.take() {
                let _ = done.send(Ok(report));
            }
            return Ok(true);
        }
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
        self.uploaded_at_done = Some(self.t.uploaded.load(Ordering::Relaxed));
        let report = self.report(now);
        self.publish(Phase::Done);
        if let Some(done) = self.done.take() {
            let _ = done.send(Ok(report));
        }
        // Stop dialing; hashers are no longer needed.
        *lock(&self.t.hash_tx) = None;
        Ok(!self.seed_after)
    }

    /// `metadata_only`: the metadata is known; the torrent completes at the next turn of
    /// the loop without opening storage.
    pub(crate) fn set_listed(&mut self, info: Info) {
        self.meta_at = Some(Instant::now());
        self.listed = Some(Arc::new(info));
    }

    fn report(&self, now: Instant) -> FetchReport {
        let meta = self.t.meta();
        let info = meta
            .map(|m| Arc::new(m.info.clone()))
            .or_else(|| self.listed.clone());
        let total_pieces = info.as_ref().map_or(0, |i| i.num_pieces() as u32);
        let pieces_wanted = self
            .t
            .state()
            .picker
            .as_ref()
            .map_or(total_pieces, Picker::wanted_count);
        let bytes_wanted = info.as_ref().map_or(0, |i| {
            i.files
                .iter()
                .zip(self.files.resolve(i).unwrap_or_default())
                .filter(|(f, w)| *w && !f.pad)
                .map(|(f, _)| f.length)
                .sum()
        });
        let start = match (self.meta_at, self.first_peer) {
            (Some(m), Some(f)) => m.max(f),
            (Some(m), None) => m,
            _ => self.started,
        };
        let secs = now.duration_since(start).as_secs_f64().max(1e-6);
        FetchReport {
            info_hash: self.t.info_hash,
            name: info.as_ref().map(|i| i.name.clone()).unwrap_or_default(),
            bytes: info.as_ref().map_or(0, |i| i.total_length()),
            pieces: total_pieces,
            elapsed: now.duration_since(self.started),
            first_peer: self.first_peer.map(|t| t.duration_since(self.started)),
            metadata: self.meta_at.map(|t| t.duration_since(self.started)),
            peers_connected: self.peers_seen,
            peers_from_pex: self.pex_learnt,
            fetched_bytes: self.fetched_bytes,
            downloaded_bytes: self.t.downloaded.load(Ordering::Relaxed),
            uploaded_bytes: self.t.uploaded.load(Ordering::Relaxed),
            pieces_resumed: self.pieces_resumed,
            pieces_checked: self.pieces_checked,
            pieces_fetched: self.pieces_fetched,
            hash_failures: self.hash_failures,
            peers_banned: self.banned,
            download_rate: self.fetched_bytes as f64 / secs,
            pieces_wanted,
            bytes_wanted,
            info,
        }
    }

    fn check_out_of_peers(&self) -> Result<(), EngineError> {
        if self.done.is_none() || self.peers_open || self.half_open > 0 || self.is_complete() {
            return Ok(());
        }
        if !self.t.state().peers.is_empty() {
            return Ok(());
        }
        let attempts = self.t.cfg.reconnect_attempts.saturating_add(1);
        if self.peers.exhausted(attempts) {
            return Err(EngineError::OutOfPeers);
        }
        Ok(())
    }

    fn add_addr(&mut self, a: SocketAddr, source: PeerSource) {
        // A family we do not listen on is one we do not dial (an IPv4-only session never
        // opens IPv6 connections, whatever the DHT or PEX hand it).
        if a.port() == 0 || a.ip().is_unspecified() || !self.t.endpoints.reaches(&a) {
            return;
        }
        let new = self.peers.add(a, source, Instant::now());
        if new && source == PeerSource::Pex {
            self.pex_learnt += 1;
        }
    }

    fn dial_more(&mut self) {
        let cfg = Arc::clone(&self.t.cfg);
        let now = Instant::now();
        while self.half_open < cfg.max_half_open {
            let connected = self.t.state().peers.len();
            if connected + self.half_open >= cfg.max_peers {
                return;
            }
            let Some(addr) = self.peers.next_to_dial(now) else {
                return;
            };
            self.half_open += 1;
            let t = Arc::clone(&self.t);
            tokio::spawn(async move {
                let hs = Handshake::new(t.info_hash, t.peer_id);
                let res = async {
                    let s = conn::connect(
                        addr,
                        t.endpoints.bind_ip(&addr),
                        t.cfg.connect_timeout,
                        t.cfg.socket_buffer,
                    )
                    .await?;
                    conn::handshake_outgoing(s, hs, t.info_hash_v2, t.cfg.handshake_timeout).await
                }
                .await;
                match res {
                    Ok((reader, wr, theirs)) => {
                        let _ = t.events.send(Event::DialDone {
                            addr,
                            result: Ok(()),
                        });
                        let _ = run_peer(Arc::clone(&t), reader, wr, theirs, addr, true).await;
                    }
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "dial failed");
                        let _ = t.events.send(Event::DialDone {
                            addr,
                            result: Err(e.fail_kind()),
                        });
                    }
                }
            });
        }
    }

    async fn on_event(&mut self, ev: Event) -> Result<(), EngineError> {
        let now = Instant::now();
        match ev {
            Event::PeerUp {
                key,
                addr,
                outgoing,
            } => {
                self.first_peer.get_or_insert(now);
                self.peers_seen += 1;
                self.key_ips.put(key, addr.ip());
                self.conns
                    .insert(key, (addr, outgoing.then_some(addr), now));
                if outgoing {
                    self.peers.on_connected(addr, now);
                }
                self.publish_current();
            }
            Event::ListenAddr { key, addr } => {
                if let Some(c) = self.conns.get_mut(&key) {
                    if c.1.is_none() {
                        c.1 = Some(addr);
                        // Learnt from an incoming connection: a candidate now, connected.
                        if self.peers.add(addr, PeerSource::Incoming, now) {
                            self.peers.on_connected(addr, now);
                        }
                    }
                }
            }
            Event::PeerDown { key, addr, fail } => {
                self.choker.remove(key);
                self.counts.remove(&key);
                let conn = self.conns.remove(&key);
                if let (Some(alias), Some((_, _, since))) = (self.aliases.remove(&key), conn) {
                    // The peer's other addresses are dialable again (its only connection
                    // is gone), with the same verdict as the connection itself.
                    for a in alias {
                        self.peers
                            .on_disconnected(a, now, now.duration_since(since));
                    }
                }
                if let Some((_, Some(dial), since)) = conn {
                    match fail {
                        Some(kind) if dial == addr || kind == FailKind::LimitReached => {
                            self.peers.on_failed(dial, now, kind)
                        }
                        _ => self
                            .peers
                            .on_disconnected(dial, now, now.duration_since(since)),
                    }
                } else if conn.is_none() {
                    // Refused at registration (limit, ban, shutdown; a duplicate was
                    // handled by its `Alias`).
                    if let Some(kind) = fail.filter(|k| *k != FailKind::Duplicate) {
                        self.peers.on_failed(addr, now, kind);
                    }
                }
                self.update_choker();
            }
            Event::DialDone { addr, result } => {
                self.half_open = self.half_open.saturating_sub(1);
                if let Err(kind) = result {
                    self.peers.on_failed(addr, now, kind);
                }
            }
            Event::Interest => self.update_choker(),
            Event::Metadata(bytes) => {
                if self.t.meta().is_none() && self.listed.is_none() {
                    // A file list can be 16 MiB: parse it off the async workers.
                    let (info, bytes) = tokio::task::spawn_blocking(move || {
                        let info = Info::from_bytes(&bytes);
                        (info, bytes)
                    })
                    .await?;
                    let info = info?;
                    tracing::debug!(name = %info.name, "metadata received");
                    if self.metadata_only {
                        self.set_listed(info);
                        return Ok(());
                    }
                    self.setup_download(info, bytes).await?;
                    self.check_and_start().await?;
                }
            }
            Event::Ban(ip) => self.ban_ip(ip),
            Event::Hashed(r) => self.on_hashed(r)?,
            Event::DhtPort(a) => {
                if let Some(tx) = &self.dht_nodes {
                    let _ = tx.send(a);
                }
            }
            Event::PexPeers(list) => {
                if self.finished_at.is_none() {
                    for a in list {
                        self.add_addr(a, PeerSource::Pex);
                    }
                }
            }
            Event::Ipv6Addr { key, addr } => {
                if self.finished_at.is_none() && self.t.endpoints.reaches(&addr) {
                    if self.peers.add(addr, PeerSource::Pex, now) {
                        tracing::debug!(%addr, "peer's IPv6 address (BEP 7) is a candidate");
                    }
                    self.alias(key, addr, now);
                }
            }
            Event::Alias { key, addr } => {
                tracing::debug!(%addr, key, "dialed a peer connected already; dropped");
                if !self.alias(key, addr, now) {
                    self.peers.on_failed(addr, now, FailKind::Duplicate);
                }
            }
        }
        Ok(())
    }

    /// Records `addr` as another address of the peer of live connection `key`: connected
    /// in the peer list (not dialed) until that connection ends. False when `key` is gone,
    /// `addr` is unknown to the peer list or already an address of a connection.
    fn alias(&mut self, key: PeerKey, addr: SocketAddr, now: Instant) -> bool {
        let Some(conn) = self.conns.get(&key) else {
            return false;
        };
        if self.aliases.get(&key).is_some_and(|l| l.contains(&addr)) {
            self.peers.on_connected(addr, now);
            return true;
        }
        let own = conn.0 == addr || conn.1 == Some(addr);
        let known = self.peers.failures(addr).is_some();
        let taken = self.aliases.values().flatten().any(|a| *a == addr);
        let full = self
            .aliases
            .get(&key)
            .is_some_and(|l| l.len() >= MAX_ALIASES);
        if own || !known || taken || full {
            return false;
        }
        self.aliases.entry(key).or_default().push(addr);
        self.peers.on_connected(addr, now);
        true
    }

    fn ban_ip(&mut self, ip: IpAddr) {
        let mut st = self.t.state();
        if st.banned.len() < MAX_BANNED && st.banned.insert(ip) {
            self.banned += 1;
            tracing::info!(%ip, "peer banned");
        }
        for p in st.peers.values() {
            if p.addr.ip() == ip {
                let _ = p.tx.send(Cmd::Close("banned"));
            }
        }
        // Whatever it delivered into unfinished pieces is not trusted either.
        let keys: Vec<PeerKey> = self
            .key_ips
            .iter()
            .filter(|(_, a)| **a == ip)
            .map(|(k, _)| *k)
            .collect();
        if let Some(p) = st.picker.as_mut() {
            for k in keys {
                p.forget_peer(k);
            }
        }
        drop(st);
        self.peers.ban_ip(ip);
    }

    fn ban_key(&mut self, key: PeerKey) {
        if let Some(&ip) = self.key_ips.peek(&key) {
            self.ban_ip(ip);
        }
    }

    /// Distinct IPs behind a set of connection ids.
    fn ips_of(&self, keys: &[PeerKey]) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = keys
            .iter()
            .filter_map(|k| self.key_ips.peek(k).copied())
            .collect();
        ips.sort_unstable();
        ips.dedup();
        ips
    }

    fn on_hashed(&mut self, r: HashResult) -> Result<(), EngineError> {
        let piece = r.piece;
        match r.outcome {
            HashOutcome::Passed(v, block_hashes) => {
                let (size, complete, senders) = {
                    let mut st = self.t.state();
                    let Some(p) = st.picker.as_mut() else {
                        return Ok(());
                    };
                    let senders = p.piece_passed(piece, Instant::now());
                    let size = p.layout().piece_size(piece).unwrap_or(0);
                    let complete = p.is_complete();
                    for e in st.peers.values() {
                        let _ = e.tx.send(Cmd::Have(piece));
                    }
                    (size, complete, senders)
                };
                let ips = self.ips_of(&senders);
                tracing::debug!(piece, senders = ?ips, "piece passed");
                for ip in ips {
                    self.trust.on_passed(ip);
                }
                self.fetched_bytes += u64::from(size);
                self.pieces_fetched += 1;
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
                let ips = self.ips_of(&senders);
                if let [only] = ips.as_slice() {
                    // One peer sent every block: certainly the culprit.
                    self.ban_ip(*only);
                } else {
                    // Several contributed: trust points (libtorrent's rule) until smart-ban
                    // names the liar once the piece passes.
                    for ip in ips {
                        if self.trust.on_failed(ip) == Verdict::Ban {
                            self.ban_ip(ip);
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
        let now = Instant::now();
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
                        snubbed: e.counters.snubbed.load(Ordering::Relaxed),
                        connected_at: self.conns.get(&key).map(|c| c.2),
                    }
                })
                .collect()
        };
        let changes = self.choker.update(now, &stats, seeding);
        let st = self.t.state();
        for (k, unchoke) in changes {
            if let Some(e) = st.peers.get(&k) {
                let _ = e.tx.send(Cmd::Choke(!unchoke));
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Per-peer and total rates.
        let dt = now.duration_since(self.last_rates).as_secs_f64();
        if dt >= 0.4 {
            let st = self.t.state();
            for (&k, e) in st.peers.iter() {
                let down = e.counters.valid_down.load(Ordering::Relaxed);
                let up = e.counters.up.load(Ordering::Relaxed);
                let c = self.counts.entry(k).or_insert((down, up, 0, 0));
                c.2 = (down.saturating_sub(c.0) as f64 / dt) as u64;
                c.3 = (up.saturating_sub(c.1) as f64 / dt) as u64;
                c.0 = down;
                c.1 = up;
            }
            drop(st);
            let down = self.t.downloaded.load(Ordering::Relaxed);
            let up = self.t.uploaded.load(Ordering::Relaxed);
            self.down_rate = down.saturating_sub(self.last_down) as f64 / dt;
            self.up_rate = up.saturating_sub(self.last_up) as f64 / dt;
            self.last_down = down;
            self.last_up = up;
            self.last_rates = now;
        }
        if now.duration_since(self.last_pex) >= PEX_EVERY {
            self.last_pex = now;
            self.offer_pex();
        }
        self.update_choker();
        self.publish_current();
    }

    /// Hands every peer the dialable addresses of our other connections (BEP 11).
    fn offer_pex(&self) {
        let list: Vec<SocketAddr> = self.conns.values().filter_map(|c| c.1).collect();
        if list.is_empty() {
            return;
        }
        let list = Arc::new(list);
        let st = self.t.state();
        for e in st.peers.values() {
            let _ = e.tx.send(Cmd::Pex(Arc::clone(&list)));
        }
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
        let (done, total, bytes_done) = {
            let st = self.t.state();
            match st.picker.as_ref() {
                Some(p) => {
                    let l = p.layout();
                    let mut bytes = 0u64;
                    if p.is_complete() && self.wanted_bytes.is_none() {
                        bytes = l.total_length();
                    } else {
                        for i in 0..l.num_pieces() {
                            if p.has(i) {
                                bytes += u64::from(l.piece_size(i).unwrap_or(0));
                            }
                        }
                    }
                    (p.have_count(), p.wanted_count(), bytes)
                }
                None => (0, 0, 0),
            }
        };
        let meta = self.t.meta();
        let peers = self.t.state().peers.len();
        self.progress.send_replace(Progress {
            phase,
            name: meta.map(|m| m.info.name.clone()),
            pieces_done: done,
            pieces_total: total,
            bytes_done,
            bytes_total: self
                .wanted_bytes
                .or(meta.map(|m| m.layout.total_length()))
                .unwrap_or(0),
            peers,
            peers_known: self.peers.len(),
            download_rate: self.down_rate,
            upload_rate: self.up_rate,
            downloaded: self.t.downloaded.load(Ordering::Relaxed),
            uploaded: self.t.uploaded.load(Ordering::Relaxed),
            elapsed: self.started.elapsed(),
            check_done: self.pieces_checked,
            check_total: self.pieces_checked,
        });
    }
}
