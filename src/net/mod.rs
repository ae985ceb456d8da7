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
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::dht::{self, AnnounceSpec, Dht, Event, LookupId, LookupStats, NodeLists, Time};
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
    /// Extra known node addresses (e.g. from saved state).
    pub known_nodes: Vec<SocketAddrV4>,
    /// Node id; random if `None`.
    pub id: Option<Id>,
    /// Core tunables.
    pub dht: dht::Config,
    /// Run a find_node lookup for our own id at start (a long-lived node joins; a one-shot
    /// lookup only needs the bootstrap contacts as a starting point).
    pub join: bool,
    /// Seed of the core's RNG; random if `None`.
    pub seed: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            bind6: None,
            bootstrap: Vec::new(),
            known_nodes: Vec::new(),
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
        info_hash: Id,
        announce: Option<AnnounceSpec>,
        updates: mpsc::UnboundedSender<LookupUpdate>,
    },
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
}

/// Peers of a get_peers lookup, as a stream; [`PeerStream::summary`] once it has ended.
pub struct PeerStream {
    rx: mpsc::UnboundedReceiver<LookupUpdate>,
    buffered: std::collections::VecDeque<SocketAddr>,
    summary: Option<LookupSummary>,
    acks: Vec<SocketAddr>,
}

impl PeerStream {
    /// The next update (peers, announce acknowledgements, the end), or `None` once the
    /// lookup and its announce acknowledgements are over or the node stopped.
    pub async fn next_update(&mut self) -> Option<LookupUpdate> {
        let u = self.rx.recv().await?;
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
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
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
        let seed = opts.seed.unwrap_or_else(rand::random);
        let id = opts.id.unwrap_or_else(|| {
            use rand::SeedableRng;
            Id::random(&mut rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed))
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let (boot_tx, boot_rx) = watch::channel(None);
        let (started_tx, started_rx) = oneshot::channel();
        let bind = opts.bind;
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
                            // Same id in both families, as libtorrent does; its own RNG.
                            dht: Dht::new(id, opts.dht.clone(), seed ^ 0x6666, Time(0)),
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
                        dht: Dht::new(id, opts.dht.clone(), seed, Time(0)),
                        v6,
                        epoch: Instant::now(),
                        rx,
                        subs: HashMap::new(),
                        next_sub: 0,
                        by4: HashMap::new(),
                        by6: HashMap::new(),
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
        self.lookup(info_hash, None)
    }

    /// Starts a get_peers lookup that announces us (TCP `port`) to the closest nodes at the
    /// end; the stream then also reports acknowledgements.
    pub fn announce(&self, info_hash: Id, port: u16) -> Result<PeerStream, NetError> {
        self.lookup(
            info_hash,
            Some(AnnounceSpec {
                port,
                implied_port: false,
            }),
        )
    }

    fn lookup(
        &self,
        info_hash: Id,
        announce: Option<AnnounceSpec>,
    ) -> Result<PeerStream, NetError> {
        let (updates, rx) = mpsc::unbounded_channel();
        self.tx
            .send(Command::GetPeers {
                info_hash,
                announce,
                updates,
            })
            .map_err(|_| NetError::Closed)?;
        Ok(PeerStream {
            rx,
            buffered: Default::default(),
            summary: None,
            acks: Vec::new(),
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
    /// One entry per lookup command, however many families it runs in.
    subs: HashMap<u64, Sub>,
    next_sub: u64,
    by4: HashMap<LookupId, u64>,
    by6: HashMap<LookupId, u64>,
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

/// Whoever started a lookup command, and what is merged for them.
struct Sub {
    tx: mpsc::UnboundedSender<LookupUpdate>,
    /// Families whose lookup has not ended.
    running: u8,
    summary: LookupSummary,
}

/// Datagrams read from the IPv6 socket per wake-up.
const RECV6_ROUNDS: usize = 64;

/// Batches read per wake-up before servicing timers and commands again.
const RECV_ROUNDS: usize = 16;
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
    /// name server entry does not hold up the others.
    /// Names resolve to both families (A and AAAA); `[v6]:port` is accepted as given.
    async fn resolve(bootstrap: &[String]) -> Vec<SocketAddr> {
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
        resolved.into_iter().flat_map(|(_, a)| a).collect()
    }

    async fn run(mut self, opts: NodeOptions) {
        let resolved = Driver::resolve(&opts.bootstrap).await;
        let mut addrs: Vec<SocketAddrV4> = resolved
            .iter()
            .filter_map(|a| SocketAddrV4::from_socket_addr(*a))
            .collect();
        addrs.extend(opts.known_nodes.iter().copied());
        let addrs6: Vec<SocketAddrV6> = resolved
            .iter()
            .filter_map(|a| SocketAddrV6::from_socket_addr(*a))
            .collect();
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
            let t4 = self.dht.poll_timeout();
            let t6 = self.v6.as_mut().and_then(|v| v.dht.poll_timeout());
            let deadline = match (t4, t6) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
            .map(|t| self.epoch + Duration::from_millis(t.0));
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
                }
            }
        }
    }

    /// Reads what is queued on the socket, a batch at a time, answering as it goes.
    async fn drain(&mut self, recv: &mut batch::RecvBatch) {
        use std::os::fd::AsRawFd;
        let fd = self.socket.as_raw_fd();
        let mut spun = false;
        for round in 0..RECV_ROUNDS {
            let n = match self
                .socket
                .try_io(tokio::io::Interest::READABLE, || recv.recv(fd))
            {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    // Under load the next datagram is usually microseconds away: poll for a
                    // moment instead of paying for a sleep and a wake-up. Only when busy
                    // (this wake-up already found work), and only once per wake-up.
                    if round == 0 || spun {
                        return;
                    }
                    spun = true;
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
        }
    }

    fn dispatch_events(&mut self) {
        while let Some(ev) = self.dht.poll_event() {
            if let Event::LookupDone { closest, .. } = &ev {
                if let Some(sub) = self
                    .by4
                    .get(&lookup_of(&ev))
                    .and_then(|i| self.subs.get_mut(i))
                {
                    sub.summary.closest = closest.clone();
                }
            }
            if let Event::Bootstrapped { nodes } = ev {
                tracing::info!("bootstrap finished: {nodes} nodes in the routing table");
                let _ = self.boot_tx.send(Some(nodes));
                continue;
            }
            on_event(&mut self.subs, &mut self.by4, ev);
        }
        if let Some(v6) = self.v6.as_mut() {
            while let Some(ev) = v6.dht.poll_event() {
                if let Event::LookupDone { closest, .. } = &ev {
                    if let Some(sub) = self
                        .by6
                        .get(&lookup_of(&ev))
                        .and_then(|i| self.subs.get_mut(i))
                    {
                        sub.summary.closest6 = closest.clone();
                    }
                }
                if let Event::Bootstrapped { nodes } = ev {
                    tracing::info!("IPv6 bootstrap finished: {nodes} nodes in the routing table");
                    continue;
                }
                on_event(&mut self.subs, &mut self.by6, ev);
            }
        }
        // Forget lookups whose receivers went away.
        self.subs.retain(|_, s| !s.tx.is_closed());
        let subs = &self.subs;
        self.by4.retain(|_, i| subs.contains_key(i));
        self.by6.retain(|_, i| subs.contains_key(i));
    }

    fn on_command(&mut self, c: Command) {
        let now = self.now();
        match c {
            Command::GetPeers {
                info_hash,
                announce,
                updates,
            } => {
                let sub = self.next_sub;
                self.next_sub += 1;
                let lid = self.dht.get_peers(now, info_hash, announce);
                self.by4.insert(lid, sub);
                let mut running = 1;
                if let Some(v6) = self.v6.as_mut() {
                    // Announce on both families (BEP 32): each table has its own closest nodes.
                    let lid6 = v6.dht.get_peers(now, info_hash, announce);
                    self.by6.insert(lid6, sub);
                    running += 1;
                }
                self.subs.insert(
                    sub,
                    Sub {
                        tx: updates,
                        running,
                        summary: LookupSummary::default(),
                    },
                );
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
                });
            }
            Command::Shutdown(_) => {}
        }
    }
}

/// The lookup an event is about (0 for events that name none).
fn lookup_of<A: DhtAddr>(ev: &Event<A>) -> LookupId {
    match ev {
        Event::Peers { lookup, .. }
        | Event::LookupDone { lookup, .. }
        | Event::AnnounceAcked { lookup, .. } => *lookup,
        Event::IdChanged { .. } | Event::Bootstrapped { .. } => LookupId(0),
    }
}

/// Routes one family's event to the command that started the lookup; `Done` goes out once
/// every family's lookup has ended, with the merged summary.
fn on_event<A: DhtAddr>(
    subs: &mut HashMap<u64, Sub>,
    by: &mut HashMap<LookupId, u64>,
    ev: Event<A>,
) {
    let lid = lookup_of(&ev);
    let sub_id = by.get(&lid).copied();
    let sub = sub_id.and_then(|i| subs.get_mut(&i));
    match ev {
        Event::Peers { peers, .. } => {
            if let Some(sub) = sub {
                let peers = peers.iter().map(|p| p.to_socket_addr()).collect();
                let _ = sub.tx.send(LookupUpdate::Peers(peers));
            }
        }
        Event::LookupDone {
            stats,
            elapsed,
            announced,
            ..
        } => {
            let Some(sub) = sub else { return };
            sub.summary.merge(&stats, elapsed, announced);
            sub.running = sub.running.saturating_sub(1);
            if announced == 0 {
                // No acknowledgements can follow for this family's lookup.
                by.remove(&lid);
            }
            if sub.running == 0 {
                let _ = sub.tx.send(LookupUpdate::Done(sub.summary.clone()));
                if sub.summary.announced == 0 {
                    if let Some(i) = sub_id {
                        subs.remove(&i);
                    }
                }
            }
        }
        Event::AnnounceAcked { node, .. } => {
            if let Some(sub) = sub {
                let _ = sub
                    .tx
                    .send(LookupUpdate::AnnounceAcked(node.to_socket_addr()));
            }
        }
        Event::IdChanged { id, external } => {
            tracing::info!(
                "external address {}: new BEP 42 node id {id}",
                A::ip_addr(&external)
            );
        }
        Event::Bootstrapped { .. } => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done<A: DhtAddr>(lookup: u64, peers: u32, announced: usize) -> Event<A> {
        Event::LookupDone {
            lookup: LookupId(lookup),
            target: Id([0; 20]),
            stats: LookupStats {
                peers,
                queried: 3,
                ..LookupStats::default()
            },
            elapsed: Duration::from_millis(10 * u64::from(peers)),
            closest: Vec::new(),
            announced,
        }
    }

    #[test]
    fn a_dual_stack_lookup_ends_once_both_families_have() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut subs = HashMap::new();
        subs.insert(
            7,
            Sub {
                tx,
                running: 2,
                summary: LookupSummary::default(),
            },
        );
        let mut by4 = HashMap::from([(LookupId(1), 7)]);
        let mut by6 = HashMap::from([(LookupId(1), 7)]);
        let p6 = SocketAddrV6::new(std::net::Ipv6Addr::LOCALHOST, 80, 0, 0);
        on_event(
            &mut subs,
            &mut by6,
            Event::Peers {
                lookup: LookupId(1),
                peers: vec![p6],
            },
        );
        on_event(&mut subs, &mut by6, done::<SocketAddrV6>(1, 1, 2));
        match rx.try_recv() {
            Ok(LookupUpdate::Peers(p)) => assert_eq!(p, vec![SocketAddr::V6(p6)]),
            other => panic!("expected IPv6 peers, got {other:?}"),
        }
        assert!(rx.try_recv().is_err(), "no Done while the IPv4 lookup runs");
        on_event(&mut subs, &mut by4, done::<SocketAddrV4>(1, 2, 0));
        match rx.try_recv() {
            Ok(LookupUpdate::Done(s)) => {
                assert_eq!(s.stats.peers, 3);
                assert_eq!(s.stats.queried, 6);
                assert_eq!(s.announced, 2);
                assert_eq!(s.elapsed, Duration::from_millis(20));
            }
            other => panic!("expected the merged Done, got {other:?}"),
        }
        assert!(subs.contains_key(&7), "kept for the IPv6 announce acks");
        assert!(by6.contains_key(&LookupId(1)) && !by4.contains_key(&LookupId(1)));
        on_event(
            &mut subs,
            &mut by6,
            Event::AnnounceAcked {
                lookup: LookupId(1),
                node: p6,
            },
        );
        assert!(matches!(
            rx.try_recv(),
            Ok(LookupUpdate::AnnounceAcked(SocketAddr::V6(_)))
        ));
    }
}
