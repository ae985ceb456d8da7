//! One task per peer connection, carrying both directions: we download from the peer what
//! we lack and upload what it asks for (if unchoked, or allowed-fast), at the same time.
//!
//! Each connection has two tasks: this one reads and decides; a writer task
//! ([`upload::writer_task`]) owns the socket's write half, sends our control messages and
//! serves queued block requests from disk. The reading side is split by job:
//! - this file: the connection's life (registration, the select loop, commands, ticks,
//!   clean-up) and message dispatch;
//! - [`download`]: what the peer has, our interest, the request pipeline, received blocks;
//! - [`upload`]: the peer's requests, choking, BEP 6 rejects and allowed-fast, the writer;
//! - [`metadata`]: BEP 9 `ut_metadata`, both fetching and serving;
//! - [`pex`]: BEP 11 `ut_pex`, both directions.

mod download;
mod metadata;
mod pex;
mod upload;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use super::conn::{PeerError, Reader};
use super::events::{Cmd, Event};
use super::hasher::HashJob;
use super::meta::Meta;
use super::peer_list::FailKind;
use super::picker::PeerKey;
use super::torrent::{next_key, PeerCounters, PeerEntry, Torrent};
use crate::torrent::Bitfield;
use crate::wire::message::ids;
use crate::wire::{
    be_u32, decode, encode, ExtensionHandshake, Handshake, Limits, Message, PexSender, UT_METADATA,
    UT_PEX,
};
use upload::{writer_task, ServeQueue};

/// The id under which we want to receive `ut_metadata` messages.
pub(crate) const OUR_UT_METADATA: u8 = 2;
/// The id under which we want to receive `ut_pex` messages.
pub(crate) const OUR_UT_PEX: u8 = 1;

/// Most bytes of control messages and metadata replies queued for the writer. A peer that
/// asks and never reads would otherwise grow this queue without bound.
const MAX_QUEUED_BYTES: usize = 2 * 1024 * 1024;

/// Runs a connection whose handshake is done, until it ends; always reports `PeerDown`.
pub(crate) async fn run_peer(
    t: Arc<Torrent>,
    mut reader: Reader,
    wr: OwnedWriteHalf,
    theirs: Handshake,
    addr: SocketAddr,
    outgoing: bool,
) -> Result<(), PeerError> {
    let key = next_key();
    let counters = Arc::new(PeerCounters::default());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let registered = {
        let mut st = t.state();
        let twin = st
            .peers
            .iter()
            .find(|(_, p)| p.peer_id == theirs.peer_id)
            .map(|(k, p)| (*k, p.outgoing, p.tx.clone()));
        // Simultaneous open (each side dialed the other): both sides keep the connection
        // the lower peer id dialed, so they agree on one; keeping each its first could
        // close both.
        let lower_dials = outgoing == (t.peer_id.0 < theirs.peer_id.0);
        let replaces = twin
            .as_ref()
            .is_some_and(|(_, twin_out, _)| *twin_out != outgoing && lower_dials);
        if st.banned.contains(&addr.ip()) {
            Err(PeerError::Dropped("banned"))
        } else if let Some((kept, _, _)) = twin.as_ref().filter(|_| !replaces) {
            let kept = *kept;
            // One connection per peer: the one already up stays. A dialed address is
            // another way to reach it (the peer list will not redial it meanwhile).
            if outgoing {
                let _ = t.events.send(Event::Alias { key: kept, addr });
            }
            Err(PeerError::Duplicate)
        } else if st.peers.len() >= t.cfg.max_peers {
            Err(PeerError::LimitReached)
        } else if t.is_shutdown() {
            Err(PeerError::Shutdown)
        } else {
            if let Some((_, _, old)) = twin.filter(|_| replaces) {
                let _ = old.send(Cmd::Close("duplicate connection"));
            }
            st.peers.insert(
                key,
                PeerEntry {
                    tx: cmd_tx,
                    addr,
                    outgoing,
                    peer_id: theirs.peer_id,
                    counters: Arc::clone(&counters),
                },
            );
            Ok(())
        }
    };
    if let Err(e) = registered {
        let _ = t.events.send(Event::PeerDown {
            key,
            addr,
            fail: Some(e.fail_kind()),
        });
        return Err(e);
    }
    let _ = t.events.send(Event::PeerUp {
        key,
        addr,
        outgoing,
    });
    tracing::debug!(%addr, key, outgoing, "peer connected");

    let serve = Arc::new(ServeQueue::default());
    let queued = Arc::new(AtomicUsize::new(0));
    let (wtx, wrx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer_task(
        wr,
        wrx,
        Arc::clone(&serve),
        Arc::clone(&t),
        Arc::clone(&counters),
        Arc::clone(&queued),
    ));
    let now = Instant::now();
    let fast = crate::wire::Reserved::ours().fast() && theirs.reserved.fast();
    let mut conn = Conn {
        key,
        addr,
        listen: outgoing.then_some(addr),
        t: Arc::clone(&t),
        theirs,
        fast,
        meta: None,
        limits: Limits::default(),
        their_ut_meta: None,
        their_ut_pex: None,
        their_reqq: usize::MAX,
        meta_size: None,
        meta_rejected: false,
        meta_inflight: HashMap::new(),
        meta_timeouts: 0,
        pex: PexSender::new(),
        last_pex_in: None,
        bits: None,
        raw_bits: None,
        raw_have_all: None,
        raw_haves: Vec::new(),
        allowed_in: HashSet::new(),
        allowed_out: Vec::new(),
        peer_choking: true,
        peer_interested: false,
        am_interested: false,
        am_choking: true,
        interest_dirty: false,
        outstanding: HashMap::new(),
        queue_target: t.cfg.initial_queue.max(1),
        last_block: now,
        snubbed: false,
        window_bytes: 0,
        window_active: false,
        rate: 0.0,
        rate_at: now,
        last_recv: now,
        last_keepalive: now,
        counters,
        serve,
        wtx,
        queued,
        out: Vec::new(),
        jobs: Vec::new(),
    };
    let res = conn.run(&mut reader, cmd_rx).await;
    conn.hand_over_jobs();
    conn.cleanup();
    drop(conn);
    writer.abort();
    tracing::debug!(%addr, key, ?res, "peer closed");
    let fail = match &res {
        Err(PeerError::Io(_) | PeerError::Closed | PeerError::Timeout | PeerError::Shutdown) => {
            None
        }
        Err(e) => Some(e.fail_kind()),
        Ok(()) => None,
    };
    let _ = t.events.send(Event::PeerDown { key, addr, fail });
    res
}

/// Per-connection state (the reading side).
struct Conn {
    key: PeerKey,
    addr: SocketAddr,
    /// Where the peer accepts connections: the dialed address, or its IP with the BEP 10 `p`
    /// port of an incoming peer (kept out of the PEX lists we send it).
    listen: Option<SocketAddr>,
    t: Arc<Torrent>,
    theirs: Handshake,
    /// Both sides set the BEP 6 bit: have_all/none, reject, allowed-fast are in use.
    fast: bool,
    meta: Option<Arc<Meta>>,
    limits: Limits,
    their_ut_meta: Option<u8>,
    their_ut_pex: Option<u8>,
    their_reqq: usize,
    /// The metadata size this peer claims (the assembler it may serve), once known.
    meta_size: Option<u64>,
    meta_rejected: bool,
    meta_inflight: HashMap<u32, Instant>,
    /// Metadata requests this peer let time out; a peer that ignores them is dropped.
    meta_timeouts: u32,
    /// What we told this peer through PEX, and when.
    pex: PexSender,
    /// When the peer last sent us PEX (incoming PEX is rate limited).
    last_pex_in: Option<Instant>,
    /// The peer's pieces, once the piece count is known.
    bits: Option<Bitfield>,
    /// A bitfield received before the metadata (validated once the piece count is known).
    raw_bits: Option<Vec<u8>>,
    /// `have_all` (true) or `have_none` (false) received before the metadata.
    raw_have_all: Option<bool>,
    /// `have`s received before the metadata, as a growable bitfield (bounded).
    raw_haves: Vec<u8>,
    /// Pieces the peer lets us request while it chokes us (BEP 6 allowed-fast), bounded.
    allowed_in: HashSet<u32>,
    /// Pieces we let this peer request while we choke it.
    allowed_out: Vec<u32>,
    peer_choking: bool,
    peer_interested: bool,
    am_interested: bool,
    am_choking: bool,
    /// Our pieces changed: re-check whether the peer still interests us.
    interest_dirty: bool,
    /// Requests we sent and not yet answered: (piece, offset) → length.
    outstanding: HashMap<(u32, u32), u32>,
    queue_target: usize,
    last_block: Instant,
    snubbed: bool,
    window_bytes: u64,
    window_active: bool,
    rate: f64,
    rate_at: Instant,
    last_recv: Instant,
    last_keepalive: Instant,
    counters: Arc<PeerCounters>,
    serve: Arc<ServeQueue>,
    wtx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes handed to the writer and not yet written.
    queued: Arc<AtomicUsize>,
    out: Vec<u8>,
    jobs: Vec<HashJob>,
}

impl Conn {
    async fn run(
        &mut self,
        reader: &mut Reader,
        mut cmd_rx: mpsc::UnboundedReceiver<Cmd>,
    ) -> Result<(), PeerError> {
        let mut meta_rx = self.t.meta_ready.subscribe();
        let mut shutdown_rx = self.t.shutdown.subscribe();
        if *shutdown_rx.borrow_and_update() {
            return Err(PeerError::Shutdown);
        }
        meta_rx.borrow_and_update();
        self.send_intro();
        if self.t.meta().is_some() {
            self.on_meta_ready(false)?;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Frames may already be buffered (read together with the handshake).
            while let Some(total) = reader.next_frame(&self.limits)? {
                let frame = reader.available().get(..total).unwrap_or_default();
                self.on_frame(frame)?;
                reader.consume(total);
            }
            self.flush().await?;
            let limits = self.limits;
            let waiting_meta = self.meta.is_none();
            tokio::select! {
                r = shutdown_rx.changed() => {
                    let _ = r;
                    return Err(PeerError::Shutdown);
                }
                cmd = cmd_rx.recv() => match cmd {
                    Some(c) => self.on_cmd(c)?,
                    None => return Err(PeerError::Shutdown),
                },
                r = meta_rx.changed(), if waiting_meta => {
                    r.map_err(|_| PeerError::Shutdown)?;
                    if self.t.meta().is_some() {
                        self.on_meta_ready(true)?;
                    }
                }
                r = reader.fill(&limits) => {
                    let n = r?;
                    self.last_recv = Instant::now();
                    // Download limit: reading later makes TCP slow the sender down.
                    self.t.download_limit.acquire(n as u64).await;
                }
                _ = tick.tick() => self.on_tick()?,
            }
        }
    }

    /// Extension handshake, what we have, allowed-fast and PORT.
    fn send_intro(&mut self) {
        if self.theirs.reserved.extension_protocol() {
            let mut m = std::collections::BTreeMap::new();
            m.insert(UT_METADATA.to_string(), OUR_UT_METADATA);
            if !self.t.meta().is_some_and(|m| m.info.private) {
                m.insert(UT_PEX.to_string(), OUR_UT_PEX);
            }
            let hs = ExtensionHandshake {
                m,
                v: Some(self.t.cfg.client_name.clone()),
                // The port of this connection's family (dual stack: one listener each).
                p: self.t.endpoints.port_for(&self.addr),
                reqq: u32::try_from(self.t.cfg.max_requests_per_peer).ok(),
                metadata_size: self.t.meta().map(|m| m.info_bytes.len() as u64),
                yourip: Some(self.addr.ip()),
                ipv6: self.t.endpoints.ipv6(),
            };
            encode(
                &Message::Extended {
                    ext_id: 0,
                    payload: hs.encode(),
                },
                &mut self.out,
            );
        }
        self.send_have_state();
        if let Some(port) = self.t.dht_port {
            if self.theirs.reserved.dht() {
                encode(&Message::Port(port), &mut self.out);
            }
        }
    }

    /// Sends queued bytes and hands complete pieces to the hashers.
    async fn flush(&mut self) -> Result<(), PeerError> {
        self.fill_requests();
        if !self.out.is_empty() {
            let bytes = std::mem::take(&mut self.out);
            let queued = self.queued.fetch_add(bytes.len(), Ordering::Relaxed) + bytes.len();
            if queued > MAX_QUEUED_BYTES {
                return Err(PeerError::Dropped("peer does not read what it asks for"));
            }
            self.wtx.send(bytes).map_err(|_| PeerError::Closed)?;
        }
        if !self.jobs.is_empty() {
            let tx = crate::sync::lock(&self.t.hash_tx).clone();
            let Some(tx) = tx else {
                self.jobs.clear();
                return Ok(());
            };
            while let Some(job) = self.jobs.pop() {
                if let Err(e) = tx.send(job).await {
                    self.jobs.push(e.0);
                    return Err(PeerError::Shutdown);
                }
            }
        }
        Ok(())
    }

    /// Complete pieces not yet handed to the hashers when the connection ends (an error right
    /// after a piece's last block) still go to them: the piece is not lost in "hashing".
    fn hand_over_jobs(&mut self) {
        if self.jobs.is_empty() {
            return;
        }
        let jobs = std::mem::take(&mut self.jobs);
        let tx = crate::sync::lock(&self.t.hash_tx).clone();
        let Some(tx) = tx else { return };
        tokio::spawn(async move {
            for job in jobs {
                if tx.send(job).await.is_err() {
                    return;
                }
            }
        });
    }

    fn on_cmd(&mut self, c: Cmd) -> Result<(), PeerError> {
        match c {
            Cmd::Have(p) => {
                encode(&Message::Have { index: p }, &mut self.out);
                self.interest_dirty = true;
                // Two seeds have nothing to say to each other.
                if self.t.is_complete() && self.bits.as_ref().is_some_and(Bitfield::is_complete) {
                    return Err(PeerError::Dropped("both seeds"));
                }
            }
            Cmd::Cancel(r) => {
                if self.outstanding.remove(&(r.index, r.begin)).is_some() {
                    encode(&Message::Cancel(r), &mut self.out);
                }
            }
            Cmd::Choke(choke) => self.set_choking(choke),
            Cmd::Pex(peers) => self.send_pex(&peers),
            Cmd::Close(why) => return Err(PeerError::Dropped(why)),
        }
        Ok(())
    }

    fn on_frame(&mut self, frame: &[u8]) -> Result<(), PeerError> {
        let Some(&id) = frame.get(4) else {
            return Ok(()); // keep-alive
        };
        if id == ids::PIECE {
            let (Some(index), Some(begin), Some(data)) =
                (be_u32(frame, 5), be_u32(frame, 9), frame.get(13..))
            else {
                return Err(PeerError::Protocol("short piece message"));
            };
            return self.on_piece(index, begin, data);
        }
        let Some((msg, _)) = decode(frame, &self.limits)? else {
            return Err(PeerError::Protocol("truncated frame"));
        };
        self.on_message(msg)
    }

    fn on_message(&mut self, msg: Message) -> Result<(), PeerError> {
        tracing::trace!(key = self.key, ?msg, "recv");
        let fast_only = matches!(
            msg,
            Message::HaveAll
                | Message::HaveNone
                | Message::Reject(_)
                | Message::AllowedFast(_)
                | Message::Suggest(_)
        );
        if fast_only && !self.fast {
            return Err(PeerError::Protocol(
                "fast extension message without the bit",
            ));
        }
        match msg {
            Message::KeepAlive | Message::Piece(_) | Message::Unknown { .. } => {}
            Message::Suggest(_) => {}
            Message::Choke => {
                self.peer_choking = true;
                self.release_all();
                self.report_source();
            }
            Message::Unchoke => {
                self.peer_choking = false;
                self.report_source();
            }
            Message::Interested | Message::NotInterested => {
                self.on_interest(matches!(msg, Message::Interested))
            }
            Message::Have { index } => self.on_have(index)?,
            Message::Bitfield(b) => self.on_bitfield(b)?,
            Message::HaveAll => self.on_have_all(true)?,
            Message::HaveNone => self.on_have_all(false)?,
            Message::Request(r) => self.on_request(r)?,
            Message::Cancel(r) => {
                if self.serve.cancel(&r) && self.fast {
                    // BEP 6: every request gets an answer; a cancelled one gets a reject.
                    encode(&Message::Reject(r), &mut self.out);
                }
            }
            Message::Reject(r) => self.on_reject(r),
            Message::AllowedFast(index) => self.on_allowed_fast(index),
            Message::Port(port) => {
                if port != 0 {
                    let _ = self
                        .t
                        .events
                        .send(Event::DhtPort(SocketAddr::new(self.addr.ip(), port)));
                }
            }
            Message::Extended { ext_id, payload } => {
                if ext_id == 0 {
                    self.on_ext_handshake(&payload)?;
                } else if ext_id == OUR_UT_METADATA {
                    self.on_ut_metadata(&payload)?;
                } else if ext_id == OUR_UT_PEX {
                    self.on_pex(&payload)?;
                }
            }
        }
        Ok(())
    }

    fn on_ext_handshake(&mut self, payload: &[u8]) -> Result<(), PeerError> {
        let hs = ExtensionHandshake::decode(payload, self.t.cfg.max_metadata_size)?;
        self.their_ut_meta = hs.extension_id(UT_METADATA);
        self.their_ut_pex = hs.extension_id(UT_PEX);
        if let Some(q) = hs.reqq {
            self.their_reqq = (q as usize).max(1);
        }
        if let Some(port) = hs.p.filter(|p| *p != 0) {
            let listen = SocketAddr::new(self.addr.ip(), port);
            self.listen = Some(listen);
            let _ = self.t.events.send(Event::ListenAddr {
                key: self.key,
                addr: listen,
            });
        }
        // BEP 7: a peer met over IPv4 names its IPv6 address; with its listen port that is
        // another way to reach the same peer (the driver drops it unless we listen on IPv6
        // ourselves, and dials it only when this connection is gone). Loopback only from a
        // loopback peer: a remote one naming ::1 would have us dial ourselves.
        let loopback = self.addr.ip().to_canonical().is_loopback();
        if let Some(ip6) = hs.ipv6.filter(|ip| {
            !ip.is_unspecified()
                && !ip.is_multicast()
                && ip.to_ipv4_mapped().is_none()
                && (loopback || !ip.is_loopback())
        }) {
            let port = hs.p.or(self.listen.map(|a| a.port()));
            if let (Some(port), false) = (port, self.addr.ip().to_canonical().is_ipv6()) {
                let addr = SocketAddr::new(std::net::IpAddr::V6(ip6), port);
                let _ = self.t.events.send(Event::Ipv6Addr {
                    key: self.key,
                    addr,
                });
            }
        }
        self.on_metadata_size(hs.metadata_size)?;
        Ok(())
    }

    fn on_tick(&mut self) -> Result<(), PeerError> {
        let now = Instant::now();
        let cfg = Arc::clone(&self.t.cfg);
        if now.duration_since(self.last_recv) > cfg.idle_timeout {
            return Err(PeerError::Timeout);
        }
        if now.duration_since(self.last_keepalive) >= cfg.keepalive_interval {
            self.last_keepalive = now;
            encode(&Message::KeepAlive, &mut self.out);
        }
        self.update_rate(now);
        self.metadata_tick(now)
    }

    /// Returns everything this peer held to the shared state.
    fn cleanup(&mut self) {
        let mut st = self.t.state();
        st.peers.remove(&self.key);
        if let Some(p) = st.picker.as_mut() {
            p.release_peer(self.key);
            p.remove_source(self.key);
            if let Some(bits) = &self.bits {
                p.remove_peer_bits(bits);
            }
        }
        st.meta_x.release_peer(self.key);
    }
}

impl PeerError {
    /// How the peer list should treat an address whose connection ended with this error.
    pub(crate) fn fail_kind(&self) -> FailKind {
        match self {
            PeerError::LimitReached => FailKind::LimitReached,
            PeerError::Duplicate => FailKind::Duplicate,
            PeerError::Timeout => FailKind::Timeout,
            PeerError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                FailKind::Refused
            }
            PeerError::Io(_) | PeerError::Closed | PeerError::Shutdown => FailKind::Io,
            _ => FailKind::Protocol,
        }
    }
}
