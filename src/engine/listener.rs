//! The engine's front door: TCP listeners — one per bound address family, so a dual-stack
//! session (BEP 32) accepts IPv4 and IPv6 peers — serving any number of torrents (an incoming
//! handshake is routed by its info-hash), and [`Listener::start`], which starts one torrent's
//! driver — downloading, or seeding complete data — and hands back a [`RunningTorrent`].
//!
//! Incoming connections are capped *before* the handshake (a flood of half-open or silent
//! connections costs at most [`EngineConfig::max_pending_handshakes`] tasks).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use super::conn::{handshake_incoming, send_handshake, PeerError};
use super::driver::{Driver, DriverParams};
use super::endpoints::Endpoints;
use super::meta::Meta;
use super::peer::run_peer;
use super::peer_list::PeerSource;
use super::ratelimit::RateLimiter;
use super::report::{FetchReport, Progress};
use super::torrent::{Corruptor, Torrent, TorrentParams};
use super::{EngineConfig, EngineError};
use crate::id::Id;
use crate::sync::lock;
use crate::torrent::{Metainfo, OpenMode, Storage};
use crate::wire::Handshake;

/// Who we are on the wire, shared by every torrent of a listener.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Our peer id.
    pub peer_id: Id,
    /// Our DHT UDP port, sent to peers with PORT (BEP 5).
    pub dht_port: Option<u16>,
    /// Engine limits and tunables.
    pub engine: EngineConfig,
    /// Upload budget shared by every torrent (`--upload-limit`).
    pub upload_limit: RateLimiter,
    /// Download budget shared by every torrent (`--download-limit`).
    pub download_limit: RateLimiter,
}

impl ListenerConfig {
    /// Defaults for `peer_id`: no DHT port, default engine, no rate limits.
    pub fn new(peer_id: Id) -> ListenerConfig {
        ListenerConfig {
            peer_id,
            dht_port: None,
            engine: EngineConfig::default(),
            upload_limit: RateLimiter::unlimited(),
            download_limit: RateLimiter::unlimited(),
        }
    }
}

struct Inner {
    local_addr: SocketAddr,
    /// Every bound listener (the first is `local_addr`), one per family.
    endpoints: Endpoints,
    peer_id: Id,
    dht_port: Option<u16>,
    cfg: Arc<EngineConfig>,
    upload_limit: RateLimiter,
    download_limit: RateLimiter,
    torrents: Mutex<HashMap<Id, Arc<Torrent>>>,
    /// The BEP 52 hybrid torrents' other name, the truncated v2 info-hash (bounded by
    /// `torrents`: one per torrent). Locked after `torrents` when both are.
    hybrids: Mutex<Hybrids>,
    shutdown: watch::Sender<bool>,
}

/// Both names of each hybrid torrent served: a peer that found us under the v2 hash
/// handshakes with it, and a peer naming the v1 hash may offer to upgrade to v2.
#[derive(Default)]
struct Hybrids {
    /// Truncated v2 info-hash → v1 info-hash.
    v1_of: HashMap<Id, Id>,
    /// v1 info-hash → truncated v2 info-hash.
    v2_of: HashMap<Id, Id>,
}

impl Hybrids {
    fn insert(&mut self, v1: Id, v2: Id) {
        self.v1_of.insert(v2, v1);
        self.v2_of.insert(v1, v2);
    }

    fn remove(&mut self, v1: &Id) {
        if let Some(v2) = self.v2_of.remove(v1) {
            self.v1_of.remove(&v2);
        }
    }
}

impl Inner {
    /// The torrent a handshake names (by its v1 hash, or a hybrid's truncated v2) and the
    /// info-hash to answer with ([`answer_hash`]).
    fn torrent_for(&self, theirs: &Handshake) -> Option<(Arc<Torrent>, Id)> {
        let torrents = lock(&self.torrents);
        let hybrids = lock(&self.hybrids);
        let (v1, t) = match torrents.get(&theirs.info_hash) {
            Some(t) => (theirs.info_hash, t),
            None => {
                let v1 = *hybrids.v1_of.get(&theirs.info_hash)?;
                (v1, torrents.get(&v1)?)
            }
        };
        let answer = answer_hash(theirs, v1, hybrids.v2_of.get(&v1).copied());
        Some((Arc::clone(t), answer))
    }
}

/// The info-hash our handshake answers `theirs` with, for a torrent whose v1 info-hash is
/// `v1` and, for a BEP 52 hybrid, whose truncated v2 info-hash is `v2`: the hash the peer
/// named, except that a peer naming a hybrid by its v1 hash with the v2 bit set (an offer to
/// upgrade, see [`crate::wire::Reserved::v2`]) gets the v2 hash.
///
/// That v2 answer is the one such a peer always takes. libtorrent 2 checks a v1 answer
/// against the hash its entry for us calls for *when the answer arrives*, and a DHT reply
/// under the v2 hash landing between its handshake and ours marks the entry v2: our echoed
/// v1 hash is then "invalid info-hash", the connection counts as failed and is not retried
/// for minutes. A truncated v2 answer it accepts for any hybrid, whatever the entry says.
fn answer_hash(theirs: &Handshake, v1: Id, v2: Option<Id>) -> Id {
    match v2 {
        Some(v2) if theirs.info_hash == v1 && theirs.reserved.v2() => v2,
        _ => theirs.info_hash,
    }
}

/// A listener serving torrents to peers. Cheap to clone (a handle); serving stops when
/// [`Listener::shutdown`] is called.
#[derive(Clone)]
pub struct Listener {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.inner.local_addr)
            .field("local_addr6", &self.local_addr6())
            .field("torrents", &self.info_hashes())
            .finish()
    }
}

/// What [`Listener::start`] runs.
#[derive(Clone)]
pub enum StartMode {
    /// Download into `output_dir` (resuming from its record); with `seed_after`, keep
    /// serving once complete.
    Download {
        /// Keep serving after completion.
        seed_after: bool,
    },
    /// Serve existing data; with `verify`, every piece is hashed first and only those that
    /// match are served (files may be missing or short); the start fails if none does.
    Seed {
        /// Check the data first.
        verify: bool,
    },
}

/// One torrent to start.
#[derive(Clone)]
pub struct TorrentSpec {
    /// The info-hash.
    pub info_hash: Id,
    /// Metainfo when known (a `.torrent`, or for seeding); else fetched from peers (BEP 9).
    pub metainfo: Option<Metainfo>,
    /// Directory the torrent's files (and the resume record) are under.
    pub data_dir: PathBuf,
    /// Download or seed.
    pub mode: StartMode,
    /// Receives DHT node addresses learnt from peers' PORT messages.
    pub dht_nodes: Option<mpsc::UnboundedSender<std::net::SocketAddr>>,
    /// Downloads: hash every piece already on disk at start, whatever the resume record says
    /// (`fetch --recheck`).
    pub recheck: bool,
    /// Downloads: which files to fetch (default: all).
    pub files: crate::torrent::FileSelection,
    /// Stop as soon as the metadata is known, creating no file: the report's `info` lists
    /// the files (`fetch --list`).
    pub metadata_only: bool,
    /// Test hook: serve corrupted data for some pieces.
    pub(crate) corrupt: Option<Corruptor>,
}

impl TorrentSpec {
    /// A download of `info_hash` into `data_dir`.
    pub fn download(info_hash: Id, data_dir: PathBuf) -> TorrentSpec {
        TorrentSpec {
            info_hash,
            metainfo: None,
            data_dir,
            mode: StartMode::Download { seed_after: false },
            dht_nodes: None,
            recheck: false,
            files: crate::torrent::FileSelection::all(),
            metadata_only: false,
            corrupt: None,
        }
    }

    /// Seeding complete data of `metainfo` found under `data_dir`.
    pub fn seed(metainfo: Metainfo, data_dir: PathBuf, verify: bool) -> TorrentSpec {
        TorrentSpec {
            info_hash: metainfo.info_hash,
            metainfo: Some(metainfo),
            data_dir,
            mode: StartMode::Seed { verify },
            dht_nodes: None,
            recheck: false,
            files: crate::torrent::FileSelection::all(),
            metadata_only: false,
            corrupt: None,
        }
    }
}

/// A started torrent: its progress, its completion (downloads), and the way to feed it peers.
/// Dropping it does not stop the torrent; [`RunningTorrent::stop`] does.
pub struct RunningTorrent {
    t: Arc<Torrent>,
    /// Live progress.
    pub progress: watch::Receiver<Progress>,
    /// Resolves when a download is complete and durable (`None` when seeding).
    pub done: Option<oneshot::Receiver<Result<FetchReport, EngineError>>>,
    /// Peer addresses to dial, with where they came from. Dropping every sender tells the
    /// torrent that no more will come (it may then report [`EngineError::OutOfPeers`]).
    pub peers: mpsc::Sender<(SocketAddr, PeerSource)>,
}

impl RunningTorrent {
    /// The shared torrent state (tests drive it directly).
    #[cfg(test)]
    pub(crate) fn torrent(&self) -> &Arc<Torrent> {
        &self.t
    }

    /// The info-hash.
    pub fn info_hash(&self) -> Id {
        self.t.info_hash
    }

    /// Payload bytes uploaded so far.
    pub fn uploaded(&self) -> u64 {
        self.t.uploaded.load(Ordering::Relaxed)
    }

    /// Payload bytes received so far.
    pub fn downloaded(&self) -> u64 {
        self.t.downloaded.load(Ordering::Relaxed)
    }

    /// Total size, once the metadata is known.
    pub fn size(&self) -> Option<u64> {
        self.t.meta().map(|m| m.layout.total_length())
    }

    /// The info dictionary's exact bytes, once known (to save a `.torrent`).
    pub fn info_bytes(&self) -> Option<Vec<u8>> {
        self.t.meta().map(|m| m.info_bytes.clone())
    }

    /// Tells the torrent that no source will send more addresses (drops this handle's
    /// sender; clones handed out earlier keep the channel open until they go too). With no
    /// source left, a download whose every known address has failed ends with
    /// [`EngineError::OutOfPeers`] instead of waiting for ever.
    pub fn close_peer_sources(&mut self) {
        self.peers = mpsc::channel(1).0;
    }

    /// Stops the torrent and closes its connections (verified pieces stay recorded).
    pub fn stop(&self) {
        self.t.shutdown.send_replace(true);
    }

    /// Whether the torrent has stopped.
    pub fn is_stopped(&self) -> bool {
        self.t.is_shutdown()
    }
}

/// Binds a listening socket with the configured buffer sizes (inherited by accepted sockets).
/// An IPv6 socket is IPv6-only (`IPV6_V6ONLY`), so `[::]:P` can sit beside `0.0.0.0:P` and
/// IPv4 peers always arrive on the IPv4 socket as plain IPv4 addresses.
fn listen(addr: SocketAddr, cfg: &EngineConfig) -> std::io::Result<TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    if let Some(size) = cfg.socket_buffer {
        let _ = socket.set_recv_buffer_size(size);
        let _ = socket.set_send_buffer_size(size);
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Listener {
    /// Binds `addr` (port 0 picks a free port) and starts accepting peers.
    pub async fn bind(addr: SocketAddr, config: ListenerConfig) -> Result<Listener, EngineError> {
        Listener::bind_dual(addr, None, config).await
    }

    /// Binds `addr` and, for a dual-stack session (BEP 32), `addr6` of the other family
    /// too (port 0 picks a free port for each), and starts accepting peers on both. Torrents
    /// then dial peers of either family from the matching address and tell each peer the
    /// port of its own family.
    pub async fn bind_dual(
        addr: SocketAddr,
        addr6: Option<SocketAddr>,
        config: ListenerConfig,
    ) -> Result<Listener, EngineError> {
        let cfg = Arc::new(config.engine);
        let mut sockets = Vec::new();
        for a in std::iter::once(addr).chain(addr6) {
            if sockets
                .iter()
                .any(|(b, _): &(SocketAddr, TcpListener)| b.is_ipv4() == a.is_ipv4())
            {
                return Err(EngineError::Bind {
                    addr: a,
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "one listen address per address family",
                    ),
                });
            }
            let bind = |source| EngineError::Bind { addr: a, source };
            let listener = listen(a, &cfg).map_err(bind)?;
            let local = listener.local_addr().map_err(bind)?;
            sockets.push((local, listener));
        }
        let bound: Vec<SocketAddr> = sockets.iter().map(|(a, _)| *a).collect();
        let local_addr = bound.first().copied().unwrap_or(addr);
        let mut endpoints = Endpoints::new(&bound);
        if endpoints.v6.is_some_and(|a| a.ip().is_unspecified()) {
            // A wildcard IPv6 listener: pick the address the `ipv6` key names (BEP 7).
            endpoints = endpoints.with_wildcard6(super::endpoints::local_ipv6());
            tracing::debug!(ipv6 = ?endpoints.ipv6(), "advertised IPv6 address of [::]");
        }
        let l = Listener {
            inner: Arc::new(Inner {
                local_addr,
                endpoints,
                peer_id: config.peer_id,
                dht_port: config.dht_port,
                cfg,
                upload_limit: config.upload_limit,
                download_limit: config.download_limit,
                torrents: Mutex::new(HashMap::new()),
                hybrids: Mutex::new(Hybrids::default()),
                shutdown: watch::channel(false).0,
            }),
        };
        for (_, listener) in sockets {
            tokio::spawn(accept_loop(listener, Arc::clone(&l.inner)));
        }
        Ok(l)
    }

    /// The bound address (with the real port when bound to port 0): announce this port.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The IPv6 listener's bound address, when listening on IPv6 beside IPv4: announce this
    /// port in the IPv6 DHT.
    pub fn local_addr6(&self) -> Option<SocketAddr> {
        let e = self.inner.endpoints;
        if self.inner.local_addr.is_ipv4() {
            e.v6
        } else {
            None
        }
    }

    /// Info-hashes currently served.
    pub fn info_hashes(&self) -> Vec<Id> {
        lock(&self.inner.torrents).keys().copied().collect()
    }

    /// The engine configuration torrents of this listener run with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// Starts one torrent (download or seed) on this listener.
    pub async fn start(&self, spec: TorrentSpec) -> Result<RunningTorrent, EngineError> {
        if let Some(mi) = &spec.metainfo {
            if mi.info_hash != spec.info_hash {
                return Err(EngineError::InfoHashMismatch {
                    expected: spec.info_hash,
                    found: mi.info_hash,
                });
            }
        }
        if lock(&self.inner.torrents).contains_key(&spec.info_hash) {
            return Err(EngineError::Duplicate(spec.info_hash));
        }
        // Seeding: the data must be there (and, with verify, right) before anyone is served.
        let seed_meta = match (&spec.mode, &spec.metainfo) {
            (StartMode::Seed { verify }, Some(mi)) => {
                let (info, bytes, dir, verify) = (
                    mi.info.clone(),
                    mi.info_bytes.clone(),
                    spec.data_dir.clone(),
                    *verify,
                );
                let meta = tokio::task::spawn_blocking(move || {
                    if !verify {
                        let storage = Storage::open(&dir, &info, OpenMode::Existing)?;
                        return Ok::<_, EngineError>((Meta::new(info, bytes, storage), None));
                    }
                    let storage = Storage::open(&dir, &info, OpenMode::Partial)?;
                    let have = storage.verify_all()?;
                    let total = storage.layout().num_pieces();
                    let ok = u32::try_from(have.len()).unwrap_or(u32::MAX);
                    if ok == 0 {
                        return Err(EngineError::DataMismatch {
                            missing: total,
                            total,
                        });
                    }
                    if ok < total {
                        tracing::warn!(
                            "serving {ok} of {total} pieces: {} do not match the data",
                            total - ok
                        );
                    }
                    Ok((Meta::new(info, bytes, storage), Some(have)))
                })
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))??;
                Some(meta)
            }
            (StartMode::Seed { .. }, None) => {
                return Err(EngineError::Internal(
                    "seeding needs the torrent's metainfo".into(),
                ))
            }
            _ => None,
        };
        let (t, events) = TorrentParams {
            info_hash: spec.info_hash,
            info_hash_v2: spec
                .metainfo
                .as_ref()
                .and_then(Metainfo::info_hash_v2_truncated),
            peer_id: self.inner.peer_id,
            cfg: Arc::clone(&self.inner.cfg),
            dht_port: self.inner.dht_port,
            endpoints: self.inner.endpoints,
            corrupt: spec.corrupt.clone(),
            upload_limit: self.inner.upload_limit.clone(),
            download_limit: self.inner.download_limit.clone(),
        }
        .build();
        let (ptx, prx) = watch::channel(Progress::default());
        let (done_tx, done_rx) = oneshot::channel();
        let seed_after = match spec.mode {
            StartMode::Download { seed_after } => seed_after,
            StartMode::Seed { .. } => true,
        };
        let rng_seed = u64::from_le_bytes(
            self.inner
                .peer_id
                .0
                .get(12..20)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([7u8; 8]),
        ) ^ u64::from_le_bytes(
            spec.info_hash
                .0
                .get(0..8)
                .and_then(|b| b.try_into().ok())
                .unwrap_or([3u8; 8]),
        );
        let mut driver = Driver::new(DriverParams {
            t: Arc::clone(&t),
            output_dir: spec.data_dir.clone(),
            progress: ptx,
            done: seed_meta.is_none().then_some(done_tx),
            seed_after,
            dht_nodes: spec.dht_nodes.clone(),
            seed: rng_seed,
            recheck: spec.recheck,
            files: spec.files.clone(),
            metadata_only: spec.metadata_only,
        });
        let alias = spec
            .metainfo
            .as_ref()
            .and_then(Metainfo::info_hash_v2_truncated);
        let done = match seed_meta {
            Some((meta, have)) => {
                driver.setup_seed(meta, have);
                None
            }
            None => {
                if let Some(mi) = spec.metainfo {
                    if spec.metadata_only {
                        driver.set_listed(mi.info);
                    } else {
                        driver.setup_download(mi.info, mi.info_bytes).await?;
                    }
                }
                Some(done_rx)
            }
        };
        {
            let mut map = lock(&self.inner.torrents);
            if map.contains_key(&spec.info_hash) {
                return Err(EngineError::Duplicate(spec.info_hash));
            }
            // Both names at once: a handshake never finds the torrent without its v2 hash.
            if let Some(a) = alias {
                lock(&self.inner.hybrids).insert(spec.info_hash, a);
            }
            map.insert(spec.info_hash, Arc::clone(&t));
        }
        let (peers_tx, peers_rx) = mpsc::channel(1024);
        let inner = Arc::clone(&self.inner);
        let t2 = Arc::clone(&t);
        tokio::spawn(async move {
            driver.run(events, peers_rx).await;
            let mut map = lock(&inner.torrents);
            if map.get(&t2.info_hash).is_some_and(|x| Arc::ptr_eq(x, &t2)) {
                map.remove(&t2.info_hash);
                lock(&inner.hybrids).remove(&t2.info_hash);
            }
        });
        Ok(RunningTorrent {
            t,
            progress: prx,
            done,
            peers: peers_tx,
        })
    }

    /// Stops the listener and every torrent it serves.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
        let torrents: Vec<Arc<Torrent>> =
            lock(&self.inner.torrents).drain().map(|(_, t)| t).collect();
        for t in torrents {
            t.shutdown.send_replace(true);
        }
    }

    /// Resolves once [`Listener::shutdown`] has been called.
    pub async fn closed(&self) {
        let mut rx = self.inner.shutdown.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.subscribe();
    let pending = Arc::new(Semaphore::new(inner.cfg.max_pending_handshakes.max(1)));
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    // Capped before the handshake: over the cap, the connection is closed.
                    let Ok(permit) = Arc::clone(&pending).try_acquire_owned() else {
                        tracing::debug!(%addr, "too many pending handshakes; refused");
                        continue;
                    };
                    let inner = Arc::clone(&inner);
                    tokio::spawn(async move {
                        let res = async {
                            let (reader, mut wr, theirs) =
                                handshake_incoming(stream, inner.cfg.handshake_timeout).await?;
                            tracing::debug!(%addr, info_hash = %theirs.info_hash,
                                v2 = theirs.reserved.v2(), "incoming handshake");
                            let (t, answer) =
                                inner.torrent_for(&theirs).ok_or(PeerError::WrongTorrent)?;
                            if theirs.peer_id == t.peer_id {
                                return Err(PeerError::SelfConnection);
                            }
                            if t.state().banned.contains(&addr.ip()) {
                                return Err(PeerError::Dropped("banned"));
                            }
                            if answer != theirs.info_hash {
                                tracing::debug!(%addr, %answer, "upgraded to the v2 info-hash");
                            }
                            send_handshake(&mut wr, answer, t.peer_id).await?;
                            drop(permit);
                            run_peer(t, reader, wr, theirs, addr, false).await
                        }
                        .await;
                        if let Err(e) = res {
                            tracing::debug!(%addr, error = %e, "incoming peer ended");
                        }
                    });
                }
                Err(e) => {
                    tracing::debug!(error = %e, "accept failed");
                    // Out of file descriptors and the like: back off briefly.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::super::tests::{cfg, listener, make_torrent, pid, LIMIT};
    use super::*;
    use crate::wire::HANDSHAKE_LEN;

    /// `mi` as a BEP 52 hybrid: `meta version` 2 beside its v1 keys, which is all the engine
    /// (serving hybrids through v1) reads of the v2 half.
    fn hybrid(mi: &Metainfo) -> Metainfo {
        let info = &mi.info_bytes;
        let at = info
            .windows(6)
            .position(|w| w == b"4:name")
            .expect("an info dictionary names its torrent");
        let mut out = info[..at].to_vec();
        out.extend_from_slice(b"12:meta versioni2e");
        out.extend_from_slice(&info[at..]);
        let h = Metainfo::from_info_bytes(&out).unwrap();
        assert!(h.info_hash_v2.is_some());
        h
    }

    /// Handshakes with `info_hash` (offering v2 or not) and returns the info-hash answered.
    async fn answer(addr: SocketAddr, info_hash: Id, offer_v2: bool) -> Id {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut ours = Handshake::new(info_hash, pid(90));
        ours.reserved.set_v2(offer_v2);
        s.write_all(&ours.to_bytes()).await.unwrap();
        let mut buf = [0u8; HANDSHAKE_LEN];
        s.read_exact(&mut buf).await.unwrap();
        Handshake::decode(&buf).unwrap().unwrap().info_hash
    }

    /// libtorrent 2 names a hybrid by its v1 hash with the v2 bit set, then drops an echoed
    /// v1 hash as "invalid info-hash" if a DHT reply under the v2 hash arrived meanwhile (the
    /// stalls of `dhtnode_seeds_a_hybrid_under_both_info_hashes_to_dhtnode_and_libtorrent`):
    /// the answer to that offer is the truncated v2 hash, which it always takes. Everyone else
    /// gets the hash they named.
    #[tokio::test]
    async fn a_hybrid_answers_an_offer_to_upgrade_with_its_v2_hash() {
        let dir = tempfile::tempdir().unwrap();
        let mi = hybrid(&make_torrent(
            dir.path(),
            "h.bin",
            &[("x", 40_000)],
            16 * 1024,
            4,
        ));
        let v1_only = make_torrent(dir.path(), "v1.bin", &[("x", 40_000)], 16 * 1024, 5);
        let v2 = mi.info_hash_v2_truncated().unwrap();
        let l = listener(61, cfg()).await;
        for m in [&mi, &v1_only] {
            l.start(TorrentSpec::seed(m.clone(), dir.path().to_path_buf(), true))
                .await
                .unwrap();
        }
        let addr = l.local_addr();
        tokio::time::timeout(LIMIT, async {
            assert_eq!(answer(addr, mi.info_hash, true).await, v2, "upgrade offer");
            assert_eq!(answer(addr, mi.info_hash, false).await, mi.info_hash);
            assert_eq!(answer(addr, v2, false).await, v2);
            assert_eq!(answer(addr, v2, true).await, v2);
            // A v1 torrent has nothing to upgrade to.
            let v1 = v1_only.info_hash;
            assert_eq!(answer(addr, v1, true).await, v1);
        })
        .await
        .unwrap();
        l.shutdown();
    }
}
