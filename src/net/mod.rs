//! The tokio driver of the DHT core: one task owns the UDP socket and the [`Dht`] state
//! machine, maps the wall clock onto the core's [`Time`], and talks to the rest of the program
//! through a cloneable [`DhtHandle`].
//!
//! Dual stack (BEP 32): with [`NodeOptions::bind6`] a second socket and a second core (an
//! IPv6 [`Dht`], its own routing table) run beside the IPv4 ones in the same task; each core
//! answers `want` from the other's table, and one lookup command runs in both, its peers and
//! its summary merged.
//!
//! Everything protocol-related lives in `dht`; this file only moves bytes, time and commands.

pub mod batch;
pub mod state;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dht::{self, AnnounceSpec, Dht, Entropy, Event, LookupId, LookupStats, NodeLists, Time};
use crate::id::Id;
use crate::krpc::{DhtAddr, NodeInfo};

/// Errors of the network driver.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The UDP socket could not be set up.
    #[error("cannot bind UDP socket on {addr}: {source}")]
    Bind {
        /// Address we tried.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The main socket is IPv4 (BEP 5); IPv6 goes in `bind6`.
    #[error("the main DHT socket must be IPv4, got {0} (give IPv6 as the second bind)")]
    NotIpv4(SocketAddr),
    /// The second socket of a dual-stack node must be IPv6 (BEP 32).
    #[error("the second DHT socket must be IPv6, got {0}")]
    NotIpv6(SocketAddr),
    /// The driver task has stopped.
    #[error("the DHT node has shut down")]
    Closed,
    /// No randomness for the node id and secrets.
    #[error(transparent)]
    Entropy(#[from] crate::dht::EntropyError),
}

/// How to start a node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// Local UDP address (IPv4).
    pub bind: SocketAddr,
    /// Local IPv6 UDP address of a dual-stack node (BEP 32), if any.
    pub bind6: Option<SocketAddr>,
    /// Bootstrap contacts as `host:port`, resolved by the driver.
    pub bootstrap: Vec<String>,
    /// Contacts saved by an earlier run, with their ids (they may enter the routing table;
    /// the bootstrap routers never do).
    pub known_nodes: Vec<crate::krpc::NodeInfo>,
    /// IPv6 contacts saved by an earlier run, for the IPv6 table of a dual-stack node
    /// (ignored without `bind6`).
    pub known_nodes6: Vec<crate::krpc::NodeInfo<SocketAddrV6>>,
    /// Node id; random if `None`.
    pub id: Option<Id>,
    /// Core tunables.
    pub dht: dht::Config,
    /// Run a find_node lookup for our own id at start (a long-lived node joins; a one-shot
    /// lookup only needs the bootstrap contacts as a starting point).
    pub join: bool,
    /// Seed of all the core's randomness, for reproducible runs only; `None` (every real
    /// node) takes the node id, the wire RNG and the token key from the OS.
    pub seed: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            bind6: None,
            bootstrap: Vec::new(),
            known_nodes: Vec::new(),
            known_nodes6: Vec::new(),
            id: None,
            dht: dht::Config::default(),
            join: true,
            seed: None,
        }
    }
}

/// A snapshot of the node for status lines and persistence.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct NodeStats {
    /// Our id, hex.
    pub node_id: String,
    /// Entries answering within 15 minutes.
    pub good_nodes: usize,
    /// All routing table entries.
    pub nodes: usize,
    /// Buckets in the table.
    pub buckets: usize,
    /// Info-hashes with stored peers.
    pub stored_infohashes: usize,
    /// Stored peers.
    pub stored_peers: usize,
    /// Queries received.
    pub queries_in: u64,
    /// Queries sent.
    pub queries_out: u64,
    /// Responses received.
    pub responses_in: u64,
    /// Our queries that timed out.
    pub timeouts: u64,
    /// Undecodable datagrams received.
    pub malformed_in: u64,
    /// Datagrams dropped by flood protection.
    pub dropped_rate_limited: u64,
    /// Lookups running.
    pub active_lookups: usize,
    /// Our address as others see it.
    pub external_addr: Option<String>,
    /// The IPv4 routing table alone.
    pub ipv4: FamilyStats,
    /// The IPv6 routing table alone (dual-stack nodes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<FamilyStats>,
}

/// One address family's part of [`NodeStats`]: each family has its own table (BEP 32).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FamilyStats {
    /// Entries answering within 15 minutes.
    pub good_nodes: usize,
    /// All routing table entries.
    pub nodes: usize,
    /// Buckets in the table.
    pub buckets: usize,
    /// Stored peers of this family.
    pub stored_peers: usize,
    /// Our address in this family as others see it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_addr: Option<String>,
}

impl FamilyStats {
    fn of<A: DhtAddr>(d: &Dht<A>, now: Time) -> FamilyStats {
        let t = d.routing_table();
        FamilyStats {
            good_nodes: t.good_count(now),
            nodes: t.len(),
            buckets: t.buckets().len(),
            stored_peers: d.store().peer_count(),
            external_addr: d.external_addr().map(|a| a.to_socket_addr().to_string()),
        }
    }
}

/// What a lookup reports when it ends.
#[derive(Clone, Debug, Default)]
pub struct LookupSummary {
    /// Counters from the core.
    pub stats: LookupStats,
    /// Wall time of the lookup.
    pub elapsed: Duration,
    /// announce_peer queries sent.
    pub announced: usize,
    /// The closest IPv4 nodes that answered, closest first.
    pub closest: Vec<NodeInfo>,
    /// The closest IPv6 nodes that answered (dual-stack nodes).
    pub closest6: Vec<NodeInfo<SocketAddrV6>>,
}

impl LookupSummary {
    /// Folds one family's finished lookup into the summary of the command.
    fn merge(&mut self, stats: &LookupStats, elapsed: Duration, announced: usize) {
        let s = &mut self.stats;
        s.queried += stats.queried;
        s.responses += stats.responses;
        s.timeouts += stats.timeouts;
        s.peers += stats.peers;
        s.first_peer_hops = match (s.first_peer_hops, stats.first_peer_hops) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        s.max_depth = s.max_depth.max(stats.max_depth);
        self.elapsed = self.elapsed.max(elapsed);
        self.announced += announced;
    }
}

/// Messages from a running lookup to whoever started it.
#[derive(Clone, Debug)]
pub enum LookupUpdate {
    /// Peers (IPv4 or IPv6), as soon as an answer carries them.
    Peers(Vec<SocketAddr>),
    /// The lookup ended (in every family it ran in).
    Done(LookupSummary),
    /// A node stored our announce.
    AnnounceAcked(SocketAddr),
}

enum Command {
    GetPeers {
        /// The stream's key, for [`Command::Cancel`].
        key: u64,
        info_hash: Id,
        announce: Option<AnnounceSpec>,
        /// The announce for the IPv6 DHT (its own TCP port).
        announce6: Option<AnnounceSpec>,
        updates: mpsc::Sender<LookupUpdate>,
    },
    /// The stream with this key was dropped: abandon its lookup.
    Cancel(u64),
    AddNode(SocketAddr),
    Stats(oneshot::Sender<NodeStats>),
    SavedState(oneshot::Sender<state::SavedState>),
    Shutdown(oneshot::Sender<()>),
}

/// A cloneable handle to a running node. Dropping every handle stops the node.
#[derive(Clone)]
pub struct DhtHandle {
    tx: mpsc::UnboundedSender<Command>,
    local_addr: SocketAddrV4,
    local_addr6: Option<SocketAddrV6>,
    id: Id,
    bootstrapped: watch::Receiver<Option<usize>>,
    next_key: Arc<AtomicU64>,
    /// Channel slots kept for the end of a lookup: `Done` and one acknowledgement per
    /// announce (at most `k`), so a reader that fell behind on peers still learns the end.
    reserve: usize,
}

/// Peer updates a lookup's channel holds beyond its reserved slots; a reader slower than
/// that loses peer batches (counted in the log), never the end of the lookup.
const PEER_UPDATES: usize = 64;

/// Peers of a get_peers lookup, as a stream; [`PeerStream::summary`] once it has ended.
/// Dropping it abandons the lookup in the node.
pub struct PeerStream {
    rx: mpsc::Receiver<LookupUpdate>,
    buffered: std::collections::VecDeque<SocketAddr>,
    summary: Option<LookupSummary>,
    acks: Vec<SocketAddr>,
    /// Where to send [`Command::Cancel`] on drop (weak: a stream does not keep the node up).
    cancel: mpsc::WeakUnboundedSender<Command>,
    key: u64,
    ended: bool,
}

impl Drop for PeerStream {
    fn drop(&mut self) {
        if !self.ended {
            if let Some(tx) = self.cancel.upgrade() {
                let _ = tx.send(Command::Cancel(self.key));
            }
        }
    }
}

impl PeerStream {
    /// The next update (peers, announce acknowledgements, the end), or `None` once the
    /// lookup and its announces are over (every announce acknowledged, or the time for
    /// answers past) or the node stopped.
    pub async fn next_update(&mut self) -> Option<LookupUpdate> {
        let Some(u) = self.rx.recv().await else {
            self.ended = true;
            return None;
        };
        match &u {
            LookupUpdate::Done(s) => self.summary = Some(s.clone()),
            LookupUpdate::AnnounceAcked(a) => self.acks.push(*a),
            LookupUpdate::Peers(_) => {}
        }
        Some(u)
    }

    /// The lookup's summary, once [`LookupUpdate::Done`] has been seen.
    pub fn summary(&self) -> Option<&LookupSummary> {
        self.summary.as_ref()
    }

    /// Nodes that acknowledged our announce so far.
    pub fn acks(&self) -> &[SocketAddr] {
        &self.acks
    }
}

impl futures_core::Stream for PeerStream {
    type Item = SocketAddr;

    /// Yields peers one by one; ends when the lookup does.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SocketAddr>> {
        loop {
            if let Some(p) = self.buffered.pop_front() {
                return Poll::Ready(Some(p));
            }
            if self.summary.is_some() {
                return Poll::Ready(None);
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(LookupUpdate::Peers(p))) => self.buffered.extend(p),
                Poll::Ready(Some(LookupUpdate::Done(s))) => self.summary = Some(s),
                Poll::Ready(Some(LookupUpdate::AnnounceAcked(a))) => self.acks.push(a),
                Poll::Ready(None) => {
                    self.ended = true;
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A node id straight from the OS random source.
fn os_random_id() -> Result<Id, crate::dht::EntropyError> {
    use rand::RngCore;
    let mut id = [0u8; 20];
    rand::rngs::OsRng
        .try_fill_bytes(&mut id)
        .map_err(crate::dht::EntropyError::from)?;
    Ok(Id(id))
}

fn bind_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // One socket per family: IPv4 has its own (and its own table).
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    // A deep receive buffer rides out bursts (answers to many parallel lookups, floods).
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock.into())
}

impl DhtHandle {
    /// Binds the socket and starts the node on a thread of its own (with a single-threaded
    /// runtime), so the DHT keeps answering however busy the caller's runtime is.
    pub async fn spawn(opts: NodeOptions) -> Result<DhtHandle, NetError> {
        if !opts.bind.is_ipv4() {
            return Err(NetError::NotIpv4(opts.bind));
        }
        let std_sock = bind_socket(opts.bind).map_err(|source| NetError::Bind {
            addr: opts.bind,
            source,
        })?;
        let local_addr = match std_sock.local_addr() {
            Ok(SocketAddr::V4(a)) => a,
            Ok(other) => return Err(NetError::NotIpv4(other)),
            Err(source) => {
                return Err(NetError::Bind {
                    addr: opts.bind,
                    source,
                })
            }
        };
        let sock6 = match opts.bind6 {
            None => None,
            Some(b) if !b.is_ipv6() => return Err(NetError::NotIpv6(b)),
            Some(b) => {
                let s = bind_socket(b).map_err(|source| NetError::Bind { addr: b, source })?;
                let local = match s.local_addr() {
                    Ok(SocketAddr::V6(a)) => a,
                    Ok(other) => return Err(NetError::NotIpv6(other)),
                    Err(source) => return Err(NetError::Bind { addr: b, source }),
                };
                Some((s, local))
            }
        };
        let local_addr6 = sock6.as_ref().map(|(_, a)| *a);
        // The IPv6 core's randomness: from the OS, or derived from the seed.
        let entropy6 = match opts.seed {
            Some(seed) => Entropy::from_seed(seed ^ 0x6666),
            None => Entropy::from_os()?,
        };
        // A guessable id or token key would let others predict us: from the OS, unless
        // a run asks to be reproducible.
        let (id, entropy) = match opts.seed {
            Some(seed) => {
                use rand::SeedableRng;
                let id = opts.id.unwrap_or_else(|| {
                    Id::random(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed))
                });
                (id, Entropy::from_seed(seed))
            }
            None => {
                let id = match opts.id {
                    Some(id) => id,
                    None => os_random_id()?,
                };
                (id, Entropy::from_os()?)
            }
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (boot_tx, boot_rx) = watch::channel(None);
        let (started_tx, started_rx) = oneshot::channel();
        let bind = opts.bind;
        let reserve = opts.dht.k + 1;
        std::thread::Builder::new()
            .name(format!("dht-{local_addr}"))
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(source) => {
                        let _ = started_tx.send(Err(source));
                        return;
                    }
                };
                rt.block_on(async move {
                    let socket = match UdpSocket::from_std(std_sock) {
                        Ok(s) => s,
                        Err(source) => {
                            let _ = started_tx.send(Err(source));
                            return;
                        }
                    };
                    let v6 = match sock6.map(|(s, _)| UdpSocket::from_std(s)).transpose() {
                        Ok(s) => s.map(|socket| V6Side {
                            socket,
                            // Same id in both families, as libtorrent does.
                            dht: Dht::with_entropy(id, opts.dht.clone(), entropy6, Time(0)),
                            buf: vec![0u8; 65536],
                        }),
                        Err(source) => {
                            let _ = started_tx.send(Err(source));
                            return;
                        }
                    };
                    let _ = started_tx.send(Ok(()));
                    let driver = Driver {
                        socket,
                        dht: Dht::with_entropy(id, opts.dht.clone(), entropy, Time(0)),
                        v6,
                        epoch: Instant::now(),
                        rx,
                        lookups: HashMap::new(),
                        lookups6: HashMap::new(),
                        merging: HashMap::new(),
                        boot_tx,
                        send: batch::SendBatch::new(),
                    };
                    driver.run(opts).await;
                });
            })
            .map_err(|source| NetError::Bind { addr: bind, source })?;
        match started_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(source)) => return Err(NetError::Bind { addr: bind, source }),
            Err(_) => return Err(NetError::Closed),
        }
        Ok(DhtHandle {
            tx,
            local_addr,
            local_addr6,
            id,
            bootstrapped: boot_rx,
            next_key: Arc::new(AtomicU64::new(1)),
            reserve,
        })
    }

    /// The UDP address the node listens on.
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local_addr
    }

    /// The IPv6 UDP address of a dual-stack node.
    pub fn local_addr6(&self) -> Option<SocketAddrV6> {
        self.local_addr6
    }

    /// Our node id at start (see [`DhtHandle::saved_state`] for the current one).
    pub fn id(&self) -> Id {
        self.id
    }

    /// Starts a get_peers lookup; peers stream out as answers arrive.
    pub fn get_peers(&self, info_hash: Id) -> Result<PeerStream, NetError> {
        self.lookup(info_hash, None, None)
    }

    /// Starts a get_peers lookup that announces us (TCP `port`) to the closest nodes at the
    /// end; the stream then also reports acknowledgements.
    pub fn announce(&self, info_hash: Id, port: u16) -> Result<PeerStream, NetError> {
        self.announce_ports(info_hash, port, None)
    }

    /// Like [`DhtHandle::announce`], for a dual-stack peer whose IPv6 TCP listener has a
    /// port of its own: `port` goes into the IPv4 DHT, `port6` (or `port` when `None`) into
    /// the IPv6 one (BEP 32).
    pub fn announce_ports(
        &self,
        info_hash: Id,
        port: u16,
        port6: Option<u16>,
    ) -> Result<PeerStream, NetError> {
        let spec = |port| AnnounceSpec {
            port,
            implied_port: false,
        };
        self.lookup(
            info_hash,
            Some(spec(port)),
            Some(spec(port6.unwrap_or(port))),
        )
    }

    fn lookup(
        &self,
        info_hash: Id,
        announce: Option<AnnounceSpec>,
        announce6: Option<AnnounceSpec>,
    ) -> Result<PeerStream, NetError> {
        let (updates, rx) = mpsc::channel(PEER_UPDATES + self.reserve);
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.tx
            .send(Command::GetPeers {
                key,
                info_hash,
                announce,
                announce6,
                updates,
            })
            .map_err(|_| NetError::Closed)?;
        Ok(PeerStream {
            rx,
            buffered: Default::default(),
            summary: None,
            acks: Vec::new(),
            cancel: self.tx.downgrade(),
            key,
            ended: false,
        })
    }

    /// Pings a node so it can enter our routing table (of its family).
    pub fn add_node(&self, addr: SocketAddr) -> Result<(), NetError> {
        self.tx
            .send(Command::AddNode(addr))
            .map_err(|_| NetError::Closed)
    }

    /// A snapshot of the node's counters and table.
    pub async fn stats(&self) -> Result<NodeStats, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Stats(tx))
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    /// What to persist: the current id (it may have changed under BEP 42) and the routing
    /// table entries worth keeping.
    pub async fn saved_state(&self) -> Result<state::SavedState, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::SavedState(tx))
            .map_err(|_| NetError::Closed)?;
        rx.await.map_err(|_| NetError::Closed)
    }

    /// Waits until the initial join lookup has finished; returns the table size then.
    pub async fn wait_bootstrapped(&self) -> Result<usize, NetError> {
        let mut rx = self.bootstrapped.clone();
        let v = rx
            .wait_for(|v| v.is_some())
            .await
            .map_err(|_| NetError::Closed)?;
        Ok(v.unwrap_or(0))
    }

    /// Stops the node task (after flushing what it has to send).
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Driver {
    socket: UdpSocket,
    dht: Dht,
    v6: Option<V6Side>,
    epoch: Instant,
    rx: mpsc::UnboundedReceiver<Command>,
    lookups: HashMap<LookupId, Subscriber>,
    /// The IPv6 core's lookups; a command's two subscribers share one channel, which ends
    /// when both are dropped.
    lookups6: HashMap<LookupId, Subscriber>,
    /// Per command key: families whose lookup still runs, and the summary merged so far
    /// (`Done` goes out once, when the last family ends).
    merging: HashMap<u64, (u8, LookupSummary)>,
    boot_tx: watch::Sender<Option<usize>>,
    send: batch::SendBatch,
}

/// The IPv6 half of a dual-stack node: plain `send_to`/`recv_from` (IPv6 traffic is a small
/// share of the DHT; the IPv4 side keeps its batched syscalls).
struct V6Side {
    socket: UdpSocket,
    dht: Dht<SocketAddrV6>,
    buf: Vec<u8>,
}

/// Datagrams read from the IPv6 socket per wake-up.
const RECV6_ROUNDS: usize = 64;

/// Whoever started a lookup: its channel, and how long to keep it once the lookup is done
/// (dropping the sender is what ends the stream).
struct Subscriber {
    key: u64,
    tx: mpsc::Sender<LookupUpdate>,
    /// Slots kept free for `Done` and the acknowledgements.
    reserve: usize,
    /// Announces sent and acknowledged; the channel closes when all are in...
    announced: usize,
    acked: usize,
    /// ...or at this instant, when no acknowledgement can arrive any more.
    close_at: Option<Instant>,
}

/// Batches read per wake-up before servicing timers and commands again.
const RECV_ROUNDS: usize = 64;
/// How long a busy driver polls the socket before going back to sleep.
const SPIN: Duration = Duration::from_micros(50);

/// Polls the socket for up to [`SPIN`]; the number of datagrams read, if any arrived.
fn spin_recv(recv: &mut batch::RecvBatch, fd: std::os::fd::RawFd) -> Option<usize> {
    let until = Instant::now() + SPIN;
    while Instant::now() < until {
        match recv.recv(fd) {
            Ok(n) if n > 0 => return Some(n),
            _ => std::hint::spin_loop(),
        }
    }
    None
}

impl Driver {
    fn now(&self) -> Time {
        Time(self.epoch.elapsed().as_millis() as u64)
    }

    /// Resolves the bootstrap hosts concurrently (each bounded to 5 s), so one slow or dead
    /// name server entry does not hold up the others: (index in `bootstrap`, addresses), in
    /// the order the user gave. Names resolve to both families (A and AAAA); `[v6]:port` is
    /// accepted as given.
    async fn resolve(bootstrap: &[String]) -> Vec<(usize, Vec<SocketAddr>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, host) in bootstrap.iter().enumerate() {
            let host = host.clone();
            tasks.spawn(async move {
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::net::lookup_host(host.clone()),
                )
                .await
                .map(|r| r.map(|addrs| addrs.collect::<Vec<SocketAddr>>()));
                (i, host, r)
            });
        }
        let mut resolved: Vec<(usize, Vec<SocketAddr>)> = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((i, host, r)) = joined else { continue };
            match r {
                Ok(Ok(addrs)) => resolved.push((i, addrs)),
                Ok(Err(e)) => tracing::warn!("cannot resolve bootstrap node {host}: {e}"),
                Err(_) => tracing::warn!("resolving bootstrap node {host} timed out"),
            }
        }
        // Keep the order the user gave.
        resolved.sort_by_key(|(i, _)| *i);
        resolved
    }

    async fn run(mut self, opts: NodeOptions) {
        let per_host = Driver::resolve(&opts.bootstrap).await;
        // Contacts named by host name (`router.bittorrent.com:6881`) are routers, which never
        // enter the table; an address literal is an ordinary node. Both families.
        let routers: Vec<SocketAddr> = per_host
            .iter()
            .filter(|(i, _)| {
                opts.bootstrap
                    .get(*i)
                    .is_some_and(|h| h.parse::<SocketAddr>().is_err())
            })
            .flat_map(|(_, a)| a.iter().copied())
            .collect();
        let routers4: Vec<SocketAddrV4> = routers
            .iter()
            .filter_map(|a| SocketAddrV4::from_socket_addr(*a))
            .collect();
        let routers6: Vec<SocketAddrV6> = routers
            .iter()
            .filter_map(|a| SocketAddrV6::from_socket_addr(*a))
            .collect();
        self.dht.add_routers(&routers4);
        if let Some(v6) = self.v6.as_mut() {
            v6.dht.add_routers(&routers6);
        }
        let resolved: Vec<SocketAddr> = per_host.into_iter().flat_map(|(_, a)| a).collect();
        let addrs: Vec<SocketAddrV4> = resolved
            .iter()
            .filter_map(|a| SocketAddrV4::from_socket_addr(*a))
            .collect();
        let addrs6: Vec<SocketAddrV6> = resolved
            .iter()
            .filter_map(|a| SocketAddrV6::from_socket_addr(*a))
            .collect();
        self.dht.add_saved_nodes(&opts.known_nodes);
        if let Some(v6) = self.v6.as_mut() {
            v6.dht.add_saved_nodes(&opts.known_nodes6);
        }
        let now = self.now();
        if opts.join {
            self.dht.bootstrap(now, &addrs);
            if let Some(v6) = self.v6.as_mut() {
                v6.dht.bootstrap(now, &addrs6);
            }
        } else {
            self.dht.add_bootstrap_addrs(&addrs);
            if let Some(v6) = self.v6.as_mut() {
                v6.dht.add_bootstrap_addrs(&addrs6);
            }
            let _ = self.boot_tx.send(Some(0));
        }
        let mut recv = batch::RecvBatch::new();
        loop {
            self.flush().await;
            self.dispatch_events();
            let closing = self
                .lookups
                .values()
                .chain(self.lookups6.values())
                .filter_map(|s| s.close_at)
                .min();
            let t6 = self.v6.as_mut().and_then(|v| v.dht.poll_timeout());
            let deadline = self
                .dht
                .poll_timeout()
                .into_iter()
                .chain(t6)
                .min()
                .map(|t| self.epoch + Duration::from_millis(t.0))
                .into_iter()
                .chain(closing)
                .min();
            let readable6 = async {
                match self.v6.as_ref() {
                    Some(v) => v.socket.readable().await,
                    None => std::future::pending().await,
                }
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                r = self.socket.readable() => {
                    if r.is_err() {
                        break;
                    }
                    self.drain(&mut recv).await;
                }
                r = readable6 => {
                    if r.is_err() {
                        break;
                    }
                    self.drain6().await;
                }
                cmd = self.rx.recv() => {
                    match cmd {
                        Some(Command::Shutdown(done)) => {
                            self.flush().await;
                            let _ = done.send(());
                            break;
                        }
                        Some(c) => self.on_command(c),
                        None => break,
                    }
                }
                _ = sleep => {
                    let now = self.now();
                    self.dht.handle_timeout(now);
                    if let Some(v6) = self.v6.as_mut() {
                        v6.dht.handle_timeout(now);
                    }
                    self.close_finished();
                }
            }
        }
    }

    /// Reads what is queued on the socket, a batch at a time, answering as it goes.
    async fn drain(&mut self, recv: &mut batch::RecvBatch) {
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        for round in 0..RECV_ROUNDS {
            let n = match self
                .socket
                .try_io(tokio::io::Interest::READABLE, || recv.recv(fd))
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Under load the next datagram is usually microseconds away: poll for a
                    // moment instead of paying for a sleep and a wake-up. Only when busy
                    // (this wake-up already found work); a spin that finds nothing ends
                    // the wake-up, so an idle node never spins more than once.
                    if round == 0 {
                        return;
                    }
                    match spin_recv(recv, fd) {
                        Some(n) => n,
                        None => return,
                    }
                }
                Err(e) => {
                    tracing::debug!("recv error: {e}");
                    return;
                }
            };
            let now = self.now();
            let other = self.v6.as_ref().map(|v| &v.dht as &dyn NodeLists);
            for i in 0..n {
                if let Some((from, data)) = recv.get(i) {
                    self.dht.handle_datagram_with(now, from, data, other);
                }
            }
            self.flush().await;
        }
    }

    /// Reads what is queued on the IPv6 socket, answering from both tables (`want`).
    async fn drain6(&mut self) {
        let now = self.now();
        let Some(v6) = self.v6.as_mut() else { return };
        for _ in 0..RECV6_ROUNDS {
            let (n, from) = match v6.socket.try_recv_from(&mut v6.buf) {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::debug!("recv error (IPv6): {e}");
                    break;
                }
            };
            let Some(from) = SocketAddrV6::from_socket_addr(from) else {
                continue;
            };
            let data = v6.buf.get(..n).unwrap_or_default();
            v6.dht
                .handle_datagram_with(now, from, data, Some(&self.dht as &dyn NodeLists));
        }
        self.flush().await;
    }

    /// Sends what the IPv6 core queued.
    async fn flush6(&mut self) {
        let Some(v6) = self.v6.as_mut() else { return };
        while let Some(t) = v6.dht.poll_transmit() {
            if let Err(e) = v6.socket.send_to(&t.data, SocketAddr::V6(t.to)).await {
                tracing::debug!("send error (IPv6) to {}: {e}", t.to);
            }
        }
    }

    /// Sends everything the cores queued, in batches (IPv4).
    async fn flush(&mut self) {
        self.flush6().await;
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        loop {
            while !self.send.is_full() {
                match self.dht.poll_transmit() {
                    Some(t) => self.send.push(&t.to, t.data),
                    None => break,
                }
            }
            if self.send.pending() == 0 {
                return;
            }
            loop {
                match self
                    .socket
                    .try_io(tokio::io::Interest::WRITABLE, || self.send.send(fd))
                {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if self.socket.writable().await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("send error: {e}");
                        break;
                    }
                }
            }
            self.report_send_failures();
        }
    }

    /// Tells the core which datagrams the kernel refused (ENETUNREACH, ENOBUFS, ...): our
    /// own failures, which must not count as the remote's timeouts.
    fn report_send_failures(&mut self) {
        let now = self.now();
        for (to, data) in self.send.take_failed() {
            self.dht.on_send_error(now, to, &data);
        }
    }

    fn dispatch_events(&mut self) {
        route_events(
            &mut self.dht,
            &mut self.lookups,
            &mut self.merging,
            Some(&self.boot_tx),
            |s, c| s.closest = c,
        );
        if let Some(v6) = self.v6.as_mut() {
            route_events(
                &mut v6.dht,
                &mut self.lookups6,
                &mut self.merging,
                None,
                |s, c| s.closest6 = c,
            );
        }
        self.close_finished();
    }

    /// Ends the streams whose announces can no longer be acknowledged, and abandons the
    /// lookups whose readers went away without a [`Command::Cancel`] reaching us.
    fn close_finished(&mut self) {
        let now = Instant::now();
        for lid in expire_subscribers(&mut self.lookups, now) {
            self.dht.cancel(lid);
        }
        if let Some(v6) = self.v6.as_mut() {
            for lid in expire_subscribers(&mut self.lookups6, now) {
                v6.dht.cancel(lid);
            }
        }
        let (l4, l6) = (&self.lookups, &self.lookups6);
        self.merging
            .retain(|k, _| l4.values().any(|s| s.key == *k) || l6.values().any(|s| s.key == *k));
    }

    fn on_command(&mut self, c: Command) {
        let now = self.now();
        match c {
            Command::GetPeers {
                key,
                info_hash,
                announce,
                announce6,
                updates,
            } => {
                let reserve = self.dht.config().k + 1;
                let sub = |tx| Subscriber {
                    key,
                    tx,
                    reserve,
                    announced: 0,
                    acked: 0,
                    close_at: None,
                };
                let mut running = 1;
                if let Some(v6) = self.v6.as_mut() {
                    // Announce on both families (BEP 32): each table has its own closest.
                    let lid6 = v6.dht.get_peers(now, info_hash, announce6);
                    self.lookups6.insert(lid6, sub(updates.clone()));
                    running += 1;
                }
                let lid = self.dht.get_peers(now, info_hash, announce);
                self.lookups.insert(lid, sub(updates));
                self.merging
                    .insert(key, (running, LookupSummary::default()));
            }
            Command::Cancel(key) => {
                let find = |m: &HashMap<LookupId, Subscriber>| {
                    m.iter().find_map(|(lid, s)| (s.key == key).then_some(*lid))
                };
                if let Some(lid) = find(&self.lookups) {
                    self.lookups.remove(&lid);
                    self.dht.cancel(lid);
                }
                if let (Some(lid), Some(v6)) = (find(&self.lookups6), self.v6.as_mut()) {
                    self.lookups6.remove(&lid);
                    v6.dht.cancel(lid);
                }
                self.merging.remove(&key);
            }
            Command::AddNode(a) => {
                if let Some(a4) = SocketAddrV4::from_socket_addr(a) {
                    self.dht.add_node(now, a4);
                } else if let (Some(a6), Some(v6)) =
                    (SocketAddrV6::from_socket_addr(a), self.v6.as_mut())
                {
                    v6.dht.add_node(now, a6);
                }
            }
            Command::Stats(tx) => {
                let ipv4 = FamilyStats::of(&self.dht, now);
                let ipv6 = self.v6.as_ref().map(|v| FamilyStats::of(&v.dht, now));
                let six = ipv6.clone().unwrap_or_default();
                let mut st = self.dht.stats().clone();
                let mut stored_infohashes = self.dht.store().infohash_count();
                let mut active_lookups = self.dht.active_lookups();
                if let Some(v6) = self.v6.as_ref() {
                    let s6 = v6.dht.stats();
                    st.queries_in += s6.queries_in;
                    st.queries_out += s6.queries_out;
                    st.responses_in += s6.responses_in;
                    st.timeouts += s6.timeouts;
                    st.malformed_in += s6.malformed_in;
                    st.dropped_rate_limited += s6.dropped_rate_limited;
                    stored_infohashes += v6.dht.store().infohash_count();
                    active_lookups += v6.dht.active_lookups();
                }
                let _ = tx.send(NodeStats {
                    node_id: self.dht.id().to_hex(),
                    good_nodes: ipv4.good_nodes + six.good_nodes,
                    nodes: ipv4.nodes + six.nodes,
                    buckets: ipv4.buckets + six.buckets,
                    stored_infohashes,
                    stored_peers: ipv4.stored_peers + six.stored_peers,
                    queries_in: st.queries_in,
                    queries_out: st.queries_out,
                    responses_in: st.responses_in,
                    timeouts: st.timeouts,
                    malformed_in: st.malformed_in,
                    dropped_rate_limited: st.dropped_rate_limited,
                    active_lookups,
                    external_addr: ipv4.external_addr.clone(),
                    ipv4,
                    ipv6,
                });
            }
            Command::SavedState(tx) => {
                let _ = tx.send(state::SavedState {
                    id: self.dht.id(),
                    nodes: self.dht.saved_nodes(now),
                    nodes6: self
                        .v6
                        .as_ref()
                        .map(|v6| v6.dht.saved_nodes(now))
                        .unwrap_or_default(),
                });
            }
            Command::Shutdown(_) => {}
        }
    }
}

/// Drops the subscribers whose announces can no longer be acknowledged; returns the
/// lookups whose readers went away (to be abandoned in the core).
fn expire_subscribers(m: &mut HashMap<LookupId, Subscriber>, now: Instant) -> Vec<LookupId> {
    let mut gone = Vec::new();
    m.retain(|lid, s| {
        if s.tx.is_closed() {
            gone.push(*lid);
            return false;
        }
        s.close_at.is_none_or(|t| t > now)
    });
    gone
}

/// Routes one family's core events to the streams that started the lookups. A command runs
/// in each family; its `Done` goes out once, merged, when the last family's lookup ends.
fn route_events<A: DhtAddr>(
    dht: &mut Dht<A>,
    lookups: &mut HashMap<LookupId, Subscriber>,
    merging: &mut HashMap<u64, (u8, LookupSummary)>,
    boot_tx: Option<&watch::Sender<Option<usize>>>,
    set_closest: fn(&mut LookupSummary, Vec<NodeInfo<A>>),
) {
    let query_timeout = dht.config().query_timeout;
    while let Some(ev) = dht.poll_event() {
        match ev {
            Event::Peers { lookup, peers } => {
                if let Some(s) = lookups.get(&lookup) {
                    // Past the reserve the reader is far behind: drop this batch.
                    if s.tx.capacity() > s.reserve {
                        let peers = peers.iter().map(|p| p.to_socket_addr()).collect();
                        let _ = s.tx.try_send(LookupUpdate::Peers(peers));
                    } else {
                        tracing::debug!(
                            "lookup {lookup:?}: reader behind, {} peers dropped",
                            peers.len()
                        );
                    }
                }
            }
            Event::LookupDone {
                lookup,
                stats,
                elapsed,
                announced,
                closest,
                ..
            } => {
                // Keep the channel while acknowledgements may still arrive: an announce
                // query is answered or forgotten within the query timeout.
                let close_at = Instant::now() + query_timeout + Duration::from_millis(100);
                if let Some(s) = lookups.get_mut(&lookup) {
                    let done = match merging.get_mut(&s.key) {
                        Some((running, summary)) => {
                            summary.merge(&stats, elapsed, announced);
                            set_closest(summary, closest);
                            *running = running.saturating_sub(1);
                            *running == 0
                        }
                        None => false,
                    };
                    if done {
                        if let Some((_, summary)) = merging.remove(&s.key) {
                            let _ = s.tx.try_send(LookupUpdate::Done(summary));
                        }
                    }
                    s.announced = announced;
                    s.close_at = Some(close_at);
                }
                if announced == 0 {
                    lookups.remove(&lookup);
                }
            }
            Event::AnnounceAcked { lookup, node } => {
                if let Some(s) = lookups.get_mut(&lookup) {
                    let _ =
                        s.tx.try_send(LookupUpdate::AnnounceAcked(node.to_socket_addr()));
                    s.acked += 1;
                    if s.acked >= s.announced {
                        lookups.remove(&lookup);
                    }
                }
            }
            Event::IdChanged { id, external } => {
                tracing::info!(
                    "external address {}: new BEP 42 node id {id}",
                    A::ip_addr(&external)
                );
            }
            Event::Bootstrapped { nodes } => {
                tracing::info!("{} bootstrap finished: {nodes} nodes in the table", A::NAME);
                if let Some(tx) = boot_tx {
                    let _ = tx.send(Some(nodes));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The driver's lookup plumbing against a scripted responder on loopback (real sockets,
    //! no sleeps: every wait is bounded by a timeout that only a bug reaches).

    use super::*;
    use crate::krpc::{Body, Message, Method, Response};

    /// A scripted contact on `bind`: with `answer` it replies to every query (get_peers
    /// with a token, announce_peer with an acknowledgement, from id `0x42…`), else it stays
    /// silent.
    async fn contact(bind: &str, answer: bool) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let contact = UdpSocket::bind(bind).await.expect("bind contact");
        let at = contact.local_addr().expect("contact address");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = contact.recv_from(&mut buf).await {
                let Some(data) = buf.get(..n) else { continue };
                let Ok(Message {
                    tid,
                    body: Body::Query(q),
                    ..
                }) = Message::decode(data)
                else {
                    continue;
                };
                if !answer {
                    continue;
                }
                let token = matches!(q.method, Method::GetPeers { .. }).then(|| b"tk".to_vec());
                let reply = Message {
                    tid,
                    version: None,
                    ip: None,
                    read_only: false,
                    body: Body::Response(Response {
                        id: Id([0x42; 20]),
                        token,
                        ..Response::default()
                    }),
                };
                let _ = contact.send_to(&reply.encode(), from).await;
            }
        });
        (at, task)
    }

    /// A node with one scripted contact (see [`contact`]) as its bootstrap.
    async fn node_with_contact(answer: bool) -> (DhtHandle, tokio::task::JoinHandle<()>) {
        let (at, task) = contact("127.0.0.1:0", answer).await;
        let node = DhtHandle::spawn(NodeOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            bootstrap: vec![at.to_string()],
            join: false,
            ..NodeOptions::default()
        })
        .await
        .expect("spawn node");
        (node, task)
    }

    #[tokio::test]
    async fn the_stream_ends_once_the_announces_are_acknowledged() {
        let (node, contact) = node_with_contact(true).await;
        let mut stream = node.announce(Id([7; 20]), 5000).expect("announce");
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while stream.next_update().await.is_some() {}
        })
        .await;
        assert!(ended.is_ok(), "the stream never ended");
        let summary = stream.summary().expect("the lookup finished");
        assert_eq!(summary.announced, 1);
        assert_eq!(stream.acks().len(), 1);
        node.shutdown().await;
        contact.abort();
    }

    /// Sends a ping from a socket on `from` to `to` and returns where the reply came from.
    async fn ping_from(from: &str, to: SocketAddr) -> SocketAddr {
        let s = UdpSocket::bind(from).await.expect("bind querier");
        let q = Message {
            tid: b"pg".to_vec(),
            version: None,
            ip: None,
            read_only: false,
            body: Body::Query(crate::krpc::Query {
                id: Id([0x17; 20]),
                method: Method::Ping,
                want: Default::default(),
            }),
        };
        s.send_to(&q.encode(), to).await.expect("send ping");
        let mut buf = [0u8; 1500];
        let (n, src) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .expect("no reply to the ping within 5 s")
            .expect("recv");
        let reply = buf.get(..n).map(Message::decode);
        assert!(
            matches!(
                reply,
                Some(Ok(Message {
                    body: Body::Response(_),
                    ..
                }))
            ),
            "not a reply: {reply:?}"
        );
        src
    }

    #[tokio::test]
    async fn a_dual_stack_node_answers_each_family_from_its_own_socket_and_saves_both_tables() {
        let node = DhtHandle::spawn(NodeOptions {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            bind6: Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 0))),
            join: false,
            ..NodeOptions::default()
        })
        .await
        .expect("spawn a dual-stack node on 127.0.0.1 and ::1");
        let v4 = SocketAddr::V4(node.local_addr());
        let v6 = SocketAddr::V6(node.local_addr6().expect("an IPv6 socket"));
        assert_ne!(v4.port(), 0);
        assert_eq!(
            ping_from("127.0.0.1:0", v4).await,
            v4,
            "IPv4 reply from the IPv4 socket"
        );
        assert_eq!(
            ping_from("[::1]:0", v6).await,
            v6,
            "IPv6 reply from the IPv6 socket"
        );

        // Contacts of each family enter their own table, and the saved state keeps both.
        let (c4, t4) = contact("127.0.0.1:0", true).await;
        let (c6, t6) = contact("[::1]:0", true).await;
        node.add_node(c4).expect("add IPv4 contact");
        node.add_node(c6).expect("add IPv6 contact");
        let saved = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let st = node.saved_state().await.expect("saved state");
                if !st.nodes.is_empty() && !st.nodes6.is_empty() {
                    return st;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("both contacts in the saved state within 10 s");
        assert_eq!(
            saved
                .nodes
                .iter()
                .map(|n| SocketAddr::V4(n.addr))
                .collect::<Vec<_>>(),
            vec![c4]
        );
        assert_eq!(
            saved
                .nodes6
                .iter()
                .map(|n| SocketAddr::V6(n.addr))
                .collect::<Vec<_>>(),
            vec![c6]
        );
        let stats = node.stats().await.expect("stats");
        assert_eq!(
            (stats.ipv4.nodes, stats.ipv6.as_ref().map(|s| s.nodes)),
            (1, Some(1))
        );
        node.shutdown().await;
        t4.abort();
        t6.abort();
    }

    #[tokio::test]
    async fn dropping_the_stream_cancels_its_lookup() {
        let (node, contact) = node_with_contact(false).await;
        let stream = node.get_peers(Id([7; 20])).expect("get_peers");
        let before = node.stats().await.expect("stats").active_lookups;
        assert_eq!(before, 1, "the lookup waits for its silent contact");
        drop(stream);
        let after = node.stats().await.expect("stats").active_lookups;
        assert_eq!(after, 0, "the dropped stream's lookup still runs");
        node.shutdown().await;
        contact.abort();
    }
}
