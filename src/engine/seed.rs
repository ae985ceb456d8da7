//! Seeding: one TCP listener serving any number of torrents, found by the info-hash in each
//! incoming handshake. Serves metadata (`ut_metadata`) and blocks read from disk; a choker
//! per torrent picks who gets served; requests per peer are capped.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::watch;

use super::conn::{handshake_incoming, send_handshake};
use super::driver::{Driver, DriverParams};
use super::peer::run_peer;
use super::torrent::{lock, Corruptor, Meta, Torrent, TorrentParams};
use super::{EngineConfig, EngineError};
use crate::id::Id;
use crate::torrent::{Metainfo, OpenMode, Storage};

struct Inner {
    local_addr: SocketAddr,
    peer_id: Id,
    dht_port: Option<u16>,
    cfg: Arc<EngineConfig>,
    torrents: Mutex<HashMap<Id, Arc<Torrent>>>,
    shutdown: watch::Sender<bool>,
}

/// A listener serving torrents to peers. Cheap to clone (a handle); serving stops when
/// [`Seeder::shutdown`] is called.
#[derive(Clone)]
pub struct Seeder {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Seeder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seeder")
            .field("local_addr", &self.inner.local_addr)
            .field("torrents", &self.info_hashes())
            .finish()
    }
}

/// Binds a listening socket with the configured buffer sizes (inherited by accepted sockets).
fn listen(addr: SocketAddr, cfg: &EngineConfig) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    if let Some(size) = cfg.socket_buffer {
        let _ = socket.set_recv_buffer_size(size);
        let _ = socket.set_send_buffer_size(size);
    }
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Seeder {
    /// Binds `addr` (port 0 picks a free port) and starts accepting peers. `peer_id` is sent
    /// in our handshakes, `dht_port` in PORT messages.
    pub async fn bind(
        addr: SocketAddr,
        peer_id: Id,
        dht_port: Option<u16>,
        config: EngineConfig,
    ) -> Result<Seeder, EngineError> {
        Self::bind_shared(addr, peer_id, dht_port, Arc::new(config)).await
    }

    pub(crate) async fn bind_shared(
        addr: SocketAddr,
        peer_id: Id,
        dht_port: Option<u16>,
        cfg: Arc<EngineConfig>,
    ) -> Result<Seeder, EngineError> {
        let listener = listen(addr, &cfg).map_err(|source| EngineError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| EngineError::Bind { addr, source })?;
        let seeder = Seeder {
            inner: Arc::new(Inner {
                local_addr,
                peer_id,
                dht_port,
                cfg,
                torrents: Mutex::new(HashMap::new()),
                shutdown: watch::channel(false).0,
            }),
        };
        tokio::spawn(accept_loop(listener, Arc::clone(&seeder.inner)));
        Ok(seeder)
    }

    /// The bound address (with the real port when bound to port 0): announce this port.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Info-hashes currently served.
    pub fn info_hashes(&self) -> Vec<Id> {
        lock(&self.inner.torrents).keys().copied().collect()
    }

    /// Payload bytes uploaded for a torrent so far.
    pub fn uploaded(&self, info_hash: &Id) -> Option<u64> {
        lock(&self.inner.torrents)
            .get(info_hash)
            .map(|t| t.uploaded.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Starts serving a torrent whose complete data lies under `data_dir` (the directory
    /// that contains the torrent's file or top-level folder). With `verify`, every piece is
    /// hashed first and the call fails unless all match.
    pub async fn add_torrent(
        &self,
        metainfo: &Metainfo,
        data_dir: &Path,
        verify: bool,
    ) -> Result<(), EngineError> {
        self.add_torrent_inner(metainfo, data_dir, verify, None)
            .await
    }

    pub(crate) async fn add_torrent_inner(
        &self,
        metainfo: &Metainfo,
        data_dir: &Path,
        verify: bool,
        corrupt: Option<Corruptor>,
    ) -> Result<(), EngineError> {
        let info = metainfo.info.clone();
        let dir = data_dir.to_path_buf();
        let storage = tokio::task::spawn_blocking(move || {
            let storage = Storage::open(&dir, &info, OpenMode::Existing)?;
            if verify {
                let ok = storage.verify_all()?.len() as u32;
                let total = storage.layout().num_pieces();
                if ok != total {
                    return Err(EngineError::DataMismatch {
                        missing: total - ok,
                        total,
                    });
                }
            }
            Ok::<_, EngineError>(storage)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))??;
        let (t, events) = TorrentParams {
            info_hash: metainfo.info_hash,
            peer_id: self.inner.peer_id,
            cfg: Arc::clone(&self.inner.cfg),
            dht_port: self.inner.dht_port,
            listen_port: Some(self.inner.local_addr.port()),
            corrupt,
        }
        .build();
        let meta = Meta::new(metainfo.info.clone(), metainfo.info_bytes.clone(), storage);
        self.register(Arc::clone(&t))?;
        let mut driver = Driver::new(DriverParams {
            t,
            output_dir: data_dir.to_path_buf(),
            progress: None,
            done: None,
            seed_after: true,
            dht_nodes: None,
            seed: u64::from_le_bytes([3, 1, 4, 1, 5, 9, 2, 6]),
        });
        driver.setup_seed(meta);
        tokio::spawn(driver.run(events, None));
        Ok(())
    }

    /// Serves an existing torrent object (a fetch in progress, then seeding).
    pub(crate) fn register(&self, t: Arc<Torrent>) -> Result<(), EngineError> {
        let mut map = lock(&self.inner.torrents);
        if map.contains_key(&t.info_hash) {
            return Err(EngineError::Duplicate(t.info_hash));
        }
        map.insert(t.info_hash, t);
        Ok(())
    }

    /// Stops serving one torrent and closes its connections. Returns false if unknown.
    pub fn remove_torrent(&self, info_hash: &Id) -> bool {
        let t = lock(&self.inner.torrents).remove(info_hash);
        match t {
            Some(t) => {
                t.shutdown.send_replace(true);
                true
            }
            None => false,
        }
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

    /// Resolves once [`Seeder::shutdown`] has been called.
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
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let inner = Arc::clone(&inner);
                    tokio::spawn(async move {
                        let res = async {
                            let (reader, mut wr, theirs) =
                                handshake_incoming(stream, inner.cfg.handshake_timeout).await?;
                            let t = lock(&inner.torrents)
                                .get(&theirs.info_hash)
                                .cloned()
                                .ok_or(super::conn::PeerError::WrongTorrent)?;
                            if theirs.peer_id == t.peer_id {
                                return Err(super::conn::PeerError::SelfConnection);
                            }
                            send_handshake(&mut wr, t.info_hash, t.peer_id).await?;
                            run_peer(t, reader, wr, theirs, addr).await
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

/// Serves one torrent (data under `data_dir`, verified first) on `bind` until `shutdown`
/// resolves. The CLI's `seed` command; use [`Seeder`] directly to learn the bound port or
/// serve several torrents.
pub async fn seed(
    metainfo: &Metainfo,
    data_dir: &Path,
    bind: SocketAddr,
    peer_id: Id,
    config: EngineConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), EngineError> {
    let seeder = Seeder::bind(bind, peer_id, None, config).await?;
    seeder.add_torrent(metainfo, data_dir, true).await?;
    tracing::info!(addr = %seeder.local_addr(), info_hash = %metainfo.info_hash, "seeding");
    shutdown.await;
    seeder.shutdown();
    Ok(())
}
