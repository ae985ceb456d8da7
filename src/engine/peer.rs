//! One task per peer connection, carrying both directions: we download from the peer what
//! we lack and upload what it asks for (if unchoked).
//!
//! Each connection has two tasks: this one reads and decides; a writer task owns the socket's
//! write half, sends our small control messages (from an unbounded channel, so the reader can
//! never deadlock against a blocked write) and serves queued block requests straight from
//! disk in batches. Piece payloads are copied once, from the read buffer into the piece's
//! buffer; the codec's `Message::Piece` (which would copy into its own `Vec`) is bypassed for
//! that one hot message.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};

use super::conn::{PeerError, Reader};
use super::hasher::HashJob;
use super::picker::{BlockOutcome, PeerKey, Picker};
use super::torrent::{lock, next_key, Cmd, Event, Meta, PeerCounters, PeerEntry, Torrent};
use crate::torrent::{Bitfield, BLOCK_SIZE};
use crate::wire::message::ids;
use crate::wire::{
    decode, encode, encode_extended_header, encode_piece_header, BlockRequest, ExtensionHandshake,
    Handshake, Limits, Message, MetadataAssembler, MetadataError, MetadataMessage, Received,
    METADATA_PIECE_LEN, UT_METADATA,
};

/// The id under which we want to receive `ut_metadata` messages.
pub(crate) const OUR_UT_METADATA: u8 = 2;

/// Largest batch of blocks the writer reads from disk and sends in one go.
const SERVE_BATCH_BYTES: usize = 512 * 1024;

/// Block requests a peer made of us, waiting to be served by the writer task.
#[derive(Default)]
pub(crate) struct ServeQueue {
    q: Mutex<VecDeque<BlockRequest>>,
    notify: Notify,
}

impl ServeQueue {
    /// Queues a request; false if the queue already holds `max` (the peer is flooding us).
    fn push(&self, r: BlockRequest, max: usize) -> bool {
        let mut q = lock(&self.q);
        if q.len() >= max {
            return false;
        }
        q.push_back(r);
        drop(q);
        self.notify.notify_one();
        true
    }

    fn cancel(&self, r: &BlockRequest) {
        lock(&self.q).retain(|x| x != r);
    }

    fn clear(&self) {
        lock(&self.q).clear();
    }

    fn pop_batch(&self, max_bytes: usize) -> Vec<BlockRequest> {
        let mut q = lock(&self.q);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while bytes < max_bytes {
            let Some(r) = q.pop_front() else { break };
            bytes += r.length as usize;
            out.push(r);
        }
        out
    }
}

/// Writer task: control messages first, then queued block requests served from disk.
async fn writer_task(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    serve: Arc<ServeQueue>,
    t: Arc<Torrent>,
    counters: Arc<PeerCounters>,
) -> Result<(), PeerError> {
    let mut spare: Vec<u8> = Vec::new();
    loop {
        // Coalesce pending control messages into one write.
        let mut ctl: Option<Vec<u8>> = None;
        while let Ok(b) = rx.try_recv() {
            match ctl.as_mut() {
                Some(c) => c.extend_from_slice(&b),
                None => ctl = Some(b),
            }
        }
        if let Some(c) = ctl {
            wr.write_all(&c).await?;
        }
        let reqs = serve.pop_batch(SERVE_BATCH_BYTES);
        if !reqs.is_empty() {
            let Some(meta) = t.meta().cloned() else {
                continue;
            };
            let corrupt = t.corrupt.clone();
            let mut buf = std::mem::take(&mut spare);
            let res = tokio::task::spawn_blocking(move || {
                buf.clear();
                let mut payload = 0u64;
                for r in &reqs {
                    encode_piece_header(r.index, r.begin, r.length, &mut buf);
                    let start = buf.len();
                    buf.resize(start + r.length as usize, 0);
                    let dst = buf.get_mut(start..).unwrap_or_default();
                    meta.read_block_into(r, dst)?;
                    if corrupt.as_ref().is_some_and(|c| c(r.index)) {
                        dst.iter_mut().for_each(|b| *b ^= 0x5A);
                    }
                    payload += u64::from(r.length);
                }
                Ok::<_, crate::torrent::StorageError>((buf, payload))
            })
            .await
            .map_err(|_| PeerError::Shutdown)?;
            let (buf, payload) = res.map_err(|_| PeerError::Dropped("cannot read block"))?;
            wr.write_all(&buf).await?;
            counters.up.fetch_add(payload, Ordering::Relaxed);
            t.uploaded.fetch_add(payload, Ordering::Relaxed);
            spare = buf;
            continue;
        }
        tokio::select! {
            b = rx.recv() => match b {
                Some(b) => wr.write_all(&b).await?,
                None => return Ok(()),
            },
            _ = serve.notify.notified() => {}
        }
    }
}

/// Runs a connection whose handshake is done, until it ends; always reports `PeerDown`.
pub(crate) async fn run_peer(
    t: Arc<Torrent>,
    mut reader: Reader,
    wr: OwnedWriteHalf,
    theirs: Handshake,
    addr: SocketAddr,
) -> Result<(), PeerError> {
    let key = next_key();
    let counters = Arc::new(PeerCounters::default());
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let registered = {
        let mut st = t.state();
        if st.banned.contains(&addr) {
            Err(PeerError::Dropped("banned"))
        } else if st.peers.len() >= t.cfg.max_peers {
            Err(PeerError::Dropped("peer limit reached"))
        } else if t.is_shutdown() {
            Err(PeerError::Shutdown)
        } else {
            st.peers.insert(
                key,
                PeerEntry {
                    tx: cmd_tx,
                    addr,
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
            fatal: true,
        });
        return Err(e);
    }
    let _ = t.events.send(Event::PeerUp { key, addr });
    tracing::debug!(%addr, key, "peer connected");

    let serve = Arc::new(ServeQueue::default());
    let (wtx, wrx) = mpsc::unbounded_channel();
    let writer = tokio::spawn(writer_task(
        wr,
        wrx,
        Arc::clone(&serve),
        Arc::clone(&t),
        Arc::clone(&counters),
    ));
    let now = Instant::now();
    let mut conn = Conn {
        key,
        addr,
        t: Arc::clone(&t),
        theirs,
        meta: None,
        limits: Limits::default(),
        their_ut_meta: None,
        their_reqq: usize::MAX,
        meta_ok: false,
        meta_rejected: false,
        meta_inflight: HashMap::new(),
        meta_timeouts: 0,
        bits: None,
        raw_bits: None,
        raw_haves: Vec::new(),
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
        out: Vec::new(),
        jobs: Vec::new(),
    };
    let res = conn.run(&mut reader, cmd_rx).await;
    conn.cleanup();
    drop(conn);
    writer.abort();
    tracing::debug!(%addr, key, ?res, "peer closed");
    let fatal = !matches!(
        res,
        Err(PeerError::Io(_) | PeerError::Closed | PeerError::Timeout | PeerError::Shutdown)
    );
    let _ = t.events.send(Event::PeerDown { key, addr, fatal });
    res
}

/// Per-connection state (the reading side).
struct Conn {
    key: PeerKey,
    addr: SocketAddr,
    t: Arc<Torrent>,
    theirs: Handshake,
    meta: Option<Arc<Meta>>,
    limits: Limits,
    their_ut_meta: Option<u8>,
    their_reqq: usize,
    /// This peer can serve the metadata we are assembling.
    meta_ok: bool,
    meta_rejected: bool,
    meta_inflight: HashMap<u32, Instant>,
    /// Metadata requests this peer let time out; a peer that ignores them is dropped.
    meta_timeouts: u32,
    /// The peer's pieces, once the piece count is known.
    bits: Option<Bitfield>,
    /// A bitfield received before the metadata (validated once the piece count is known).
    raw_bits: Option<Vec<u8>>,
    /// `have`s received before the metadata, as a growable bitfield (bounded).
    raw_haves: Vec<u8>,
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
    out: Vec<u8>,
    jobs: Vec<HashJob>,
}

fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_be_bytes(b))
}

/// Metadata requests a peer may leave unanswered before we drop it (a peer that advertises
/// metadata and never sends it would otherwise hold a metadata-only fetch forever).
const MAX_METADATA_TIMEOUTS: u32 = 2;

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
                    r?;
                    self.last_recv = Instant::now();
                }
                _ = tick.tick() => self.on_tick()?,
            }
        }
    }

    /// Extension handshake, bitfield (if metadata is known) and PORT.
    fn send_intro(&mut self) {
        if self.theirs.reserved.extension_protocol() {
            let mut m = std::collections::BTreeMap::new();
            m.insert(UT_METADATA.to_string(), OUR_UT_METADATA);
            let hs = ExtensionHandshake {
                m,
                v: Some(self.t.cfg.client_name.clone()),
                p: self.t.listen_port,
                reqq: u32::try_from(self.t.cfg.max_requests_per_peer).ok(),
                metadata_size: self.t.meta().map(|m| m.info_bytes.len() as u64),
                yourip: Some(self.addr.ip()),
            };
            encode(
                &Message::Extended {
                    ext_id: 0,
                    payload: hs.encode(),
                },
                &mut self.out,
            );
        }
        if self.t.meta().is_some() {
            let bits = self.t.state().picker.as_ref().map(Picker::bitfield);
            if let Some(b) = bits.filter(|b| b.count() > 0) {
                encode(&Message::Bitfield(b.as_bytes().to_vec()), &mut self.out);
            }
        }
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
            self.wtx
                .send(std::mem::take(&mut self.out))
                .map_err(|_| PeerError::Closed)?;
        }
        if !self.jobs.is_empty() {
            let tx = lock(&self.t.hash_tx).clone();
            let Some(tx) = tx else {
                self.jobs.clear();
                return Ok(());
            };
            for job in self.jobs.drain(..) {
                tx.send(job).await.map_err(|_| PeerError::Shutdown)?;
            }
        }
        Ok(())
    }

    fn on_cmd(&mut self, c: Cmd) -> Result<(), PeerError> {
        match c {
            Cmd::Have(p) => {
                encode(&Message::Have { index: p }, &mut self.out);
                self.interest_dirty = true;
                // Two seeds have nothing to say to each other.
                let complete = self
                    .t
                    .state()
                    .picker
                    .as_ref()
                    .is_some_and(Picker::is_complete);
                if complete && self.bits.as_ref().is_some_and(Bitfield::is_complete) {
                    return Err(PeerError::Dropped("both seeds"));
                }
            }
            Cmd::Cancel(r) => {
                if self.outstanding.remove(&(r.index, r.begin)).is_some() {
                    encode(&Message::Cancel(r), &mut self.out);
                }
            }
            Cmd::Choke(choke) => {
                if choke != self.am_choking {
                    self.am_choking = choke;
                    if choke {
                        self.serve.clear();
                        encode(&Message::Choke, &mut self.out);
                    } else {
                        encode(&Message::Unchoke, &mut self.out);
                    }
                }
            }
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

    fn on_piece(&mut self, index: u32, begin: u32, data: &[u8]) -> Result<(), PeerError> {
        let Some(meta) = self.meta.clone() else {
            return Err(PeerError::Protocol("piece before metadata"));
        };
        let size = meta
            .layout
            .piece_size(index)
            .map_err(|_| PeerError::Protocol("piece index out of range"))?;
        let len = u32::try_from(data.len()).map_err(|_| PeerError::Protocol("block too big"))?;
        if u64::from(begin) + u64::from(len) > u64::from(size) {
            return Err(PeerError::Protocol("block beyond piece end"));
        }
        self.counters
            .down
            .fetch_add(u64::from(len), Ordering::Relaxed);
        self.t
            .downloaded
            .fetch_add(u64::from(len), Ordering::Relaxed);
        self.window_bytes += u64::from(len);
        if self.outstanding.remove(&(index, begin)).is_some() {
            self.last_block = Instant::now();
            if self.snubbed {
                self.snubbed = false;
                self.queue_target = self.t.cfg.initial_queue.max(1);
            } else if self.queue_target < self.t.cfg.max_queue {
                self.queue_target += 1; // slow start: doubles per round trip
            }
        }
        let mut st = self.t.state();
        let st = &mut *st;
        let Some(picker) = st.picker.as_mut() else {
            return Ok(());
        };
        if let BlockOutcome::Accepted { complete, cancel } =
            picker.on_block(self.key, index, begin, len)
        {
            let t = &self.t;
            let buf = st
                .buffers
                .entry(index)
                .or_insert_with(|| t.take_buffer(size as usize));
            if let Some(dst) = buf.get_mut(begin as usize..begin as usize + data.len()) {
                dst.copy_from_slice(data);
            }
            let req = BlockRequest {
                index,
                begin,
                length: len,
            };
            for c in cancel {
                if let Some(p) = st.peers.get(&c) {
                    let _ = p.tx.send(Cmd::Cancel(req));
                }
            }
            if complete {
                if let Some(data) = st.buffers.remove(&index) {
                    self.jobs.push(HashJob {
                        piece: index,
                        data,
                        meta: Arc::clone(&meta),
                        block_hashes: picker.is_suspect(index),
                        torrent: Arc::clone(&self.t),
                    });
                }
            }
        }
        Ok(())
    }

    fn on_message(&mut self, msg: Message) -> Result<(), PeerError> {
        tracing::trace!(key = self.key, ?msg, "recv");
        match msg {
            Message::KeepAlive | Message::Piece(_) | Message::Unknown { .. } => {}
            Message::Choke => {
                self.peer_choking = true;
                self.release_all();
            }
            Message::Unchoke => self.peer_choking = false,
            Message::Interested | Message::NotInterested => {
                let interested = matches!(msg, Message::Interested);
                if !interested {
                    self.serve.clear();
                }
                if interested != self.peer_interested {
                    self.peer_interested = interested;
                    self.counters
                        .interested
                        .store(interested, Ordering::Relaxed);
                    let _ = self.t.events.send(Event::Interest);
                }
            }
            Message::Have { index } => self.on_have(index)?,
            Message::Bitfield(b) => self.on_bitfield(b)?,
            Message::Request(r) => self.on_request(r)?,
            Message::Cancel(r) => self.serve.cancel(&r),
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
                }
            }
        }
        Ok(())
    }

    fn on_have(&mut self, index: u32) -> Result<(), PeerError> {
        if let Some(bits) = self.bits.as_mut() {
            if bits.get(index) {
                return Ok(());
            }
            if !bits.set(index, true) {
                return Err(PeerError::Protocol("have out of range"));
            }
            let mut st = self.t.state();
            if let Some(p) = st.picker.as_mut() {
                p.add_have(index);
                if !self.am_interested && !p.has(index) {
                    self.am_interested = true;
                    encode(&Message::Interested, &mut self.out);
                }
            }
            return Ok(());
        }
        // Metadata not known yet: remember, bounded by the bitfield size limit.
        let byte = (index / 8) as usize;
        if byte >= self.limits.max_bitfield_len as usize {
            return Err(PeerError::Protocol("have index too large"));
        }
        if self.raw_haves.len() <= byte {
            self.raw_haves.resize(byte + 1, 0);
        }
        if let Some(b) = self.raw_haves.get_mut(byte) {
            *b |= 0x80 >> (index % 8);
        }
        Ok(())
    }

    fn on_bitfield(&mut self, raw: Vec<u8>) -> Result<(), PeerError> {
        let Some(meta) = &self.meta else {
            self.raw_bits = Some(raw);
            return Ok(());
        };
        let n = meta.layout.num_pieces();
        let bits = Bitfield::from_bytes(&raw, n).ok_or(PeerError::Protocol("bad bitfield"))?;
        let want = {
            let mut st = self.t.state();
            st.picker.as_mut().map(|p| {
                if let Some(old) = &self.bits {
                    p.remove_peer_bits(old);
                }
                p.add_peer_bits(&bits);
                p.interesting(&bits)
            })
        };
        if let Some(want) = want {
            self.set_interest(want);
        }
        self.bits = Some(bits);
        Ok(())
    }

    fn set_interest(&mut self, want: bool) {
        if want != self.am_interested {
            self.am_interested = want;
            encode(
                &if want {
                    Message::Interested
                } else {
                    Message::NotInterested
                },
                &mut self.out,
            );
        }
    }

    fn on_request(&mut self, r: BlockRequest) -> Result<(), PeerError> {
        let Some(meta) = &self.meta else {
            return Ok(());
        };
        let size = meta
            .layout
            .piece_size(r.index)
            .map_err(|_| PeerError::Protocol("request out of range"))?;
        if u64::from(r.begin) + u64::from(r.length) > u64::from(size) {
            return Err(PeerError::Protocol("request beyond piece end"));
        }
        if self.am_choking {
            return Ok(()); // BEP 3: requests while choked are dropped
        }
        let have = self
            .t
            .state()
            .picker
            .as_ref()
            .is_some_and(|p| p.has(r.index));
        if !have {
            return Ok(());
        }
        if !self.serve.push(r, self.t.cfg.max_requests_per_peer) {
            return Err(PeerError::TooManyRequests);
        }
        Ok(())
    }

    fn on_ext_handshake(&mut self, payload: &[u8]) -> Result<(), PeerError> {
        let hs = ExtensionHandshake::decode(payload, self.t.cfg.max_metadata_size)?;
        self.their_ut_meta = hs.extension_id(UT_METADATA);
        if let Some(q) = hs.reqq {
            self.their_reqq = (q as usize).max(1);
        }
        if self.t.meta().is_none() && self.their_ut_meta.is_some() {
            if let Some(size) = hs.metadata_size {
                let mut st = self.t.state();
                let mx = &mut st.meta_x;
                if !mx.done {
                    match &mx.assembler {
                        Some(a) => self.meta_ok = a.total_size() == size,
                        None => {
                            mx.assembler = Some(MetadataAssembler::new(
                                self.t.info_hash,
                                size,
                                self.t.cfg.max_metadata_size,
                            )?);
                            self.meta_ok = true;
                        }
                    }
                }
            }
        }
        self.request_metadata();
        Ok(())
    }

    /// Asks this peer for metadata pieces nobody else is fetching.
    fn request_metadata(&mut self) {
        if self.meta.is_some() || !self.meta_ok || self.meta_rejected {
            return;
        }
        let Some(their_id) = self.their_ut_meta else {
            return;
        };
        let mut max = self.t.cfg.metadata_requests_per_peer.max(1);
        let now = Instant::now();
        let mut st = self.t.state();
        let mx = &mut st.meta_x;
        if mx.done {
            return;
        }
        if mx.single_source {
            match mx.exclusive {
                None => mx.exclusive = Some(self.key),
                Some(k) if k != self.key => return,
                _ => {}
            }
            max = usize::MAX;
        }
        let Some(asm) = mx.assembler.as_mut() else {
            return;
        };
        while self.meta_inflight.len() < max {
            let Some(piece) = asm.next_request(self.key) else {
                break;
            };
            self.meta_inflight.insert(piece, now);
            let mut payload = Vec::new();
            MetadataMessage::Request { piece }.encode(&mut payload);
            encode(
                &Message::Extended {
                    ext_id: their_id,
                    payload,
                },
                &mut self.out,
            );
        }
    }

    fn on_ut_metadata(&mut self, payload: &[u8]) -> Result<(), PeerError> {
        let msg = match MetadataMessage::decode(payload) {
            Ok(m) => m,
            Err(MetadataError::UnknownMsgType(_)) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match msg {
            MetadataMessage::Request { piece } => self.serve_metadata(piece),
            MetadataMessage::Reject { piece } => {
                self.meta_inflight.remove(&piece);
                self.meta_rejected = true;
                let mut st = self.t.state();
                if let Some(a) = st.meta_x.assembler.as_mut() {
                    a.release(piece, self.key);
                }
                if st.meta_x.exclusive == Some(self.key) {
                    st.meta_x.exclusive = None;
                }
            }
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                self.meta_inflight.remove(&piece);
                if self.t.meta().is_some() {
                    return Ok(());
                }
                let result = {
                    let mut st = self.t.state();
                    st.meta_x
                        .assembler
                        .as_mut()
                        .map(|a| a.receive(self.key, piece, total_size, &data))
                };
                match result {
                    None | Some(Ok(Received::Duplicate)) => {}
                    Some(Ok(Received::Stored)) => self.request_metadata(),
                    Some(Ok(Received::Complete(bytes))) => {
                        tracing::debug!(len = bytes.len(), "metadata complete");
                        {
                            let mut st = self.t.state();
                            st.meta_x.done = true;
                            st.meta_x.assembler = None;
                        }
                        let _ = self.t.events.send(Event::Metadata(bytes));
                    }
                    Some(Err(MetadataError::HashMismatch { peers })) => {
                        return self.on_bad_metadata(&peers);
                    }
                    Some(Err(e)) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// The assembled metadata did not hash to the info-hash.
    fn on_bad_metadata(&mut self, peers: &[PeerKey]) -> Result<(), PeerError> {
        self.meta_inflight.clear();
        if let [culprit] = peers {
            if *culprit == self.key {
                let _ = self.t.events.send(Event::Ban(self.addr));
                return Err(PeerError::Dropped("sent bad metadata"));
            }
            let st = self.t.state();
            if let Some(p) = st.peers.get(culprit) {
                let _ = self.t.events.send(Event::Ban(p.addr));
                let _ = p.tx.send(Cmd::Close("sent bad metadata"));
            }
        } else {
            // Unknown which of several peers lied: fetch from one at a time from now on.
            let mut st = self.t.state();
            st.meta_x.single_source = true;
            st.meta_x.exclusive = None;
        }
        self.request_metadata();
        Ok(())
    }

    fn serve_metadata(&mut self, piece: u32) {
        let Some(their_id) = self.their_ut_meta else {
            return;
        };
        let chunk = self.t.meta().and_then(|m| {
            let start = (piece as usize).checked_mul(METADATA_PIECE_LEN)?;
            let end = start
                .checked_add(METADATA_PIECE_LEN)?
                .min(m.info_bytes.len());
            Some((m.info_bytes.get(start..end)?, m.info_bytes.len()))
        });
        let mut payload = Vec::new();
        match chunk {
            Some((data, total)) if !data.is_empty() => {
                MetadataMessage::encode_data_header(piece, total as u64, &mut payload);
                encode_extended_header(their_id, payload.len() + data.len(), &mut self.out);
                self.out.extend_from_slice(&payload);
                self.out.extend_from_slice(data);
            }
            _ => {
                MetadataMessage::Reject { piece }.encode(&mut payload);
                encode(
                    &Message::Extended {
                        ext_id: their_id,
                        payload,
                    },
                    &mut self.out,
                );
            }
        }
    }

    /// Metadata became known: validate what the peer told us before, start downloading.
    fn on_meta_ready(&mut self, announce_ours: bool) -> Result<(), PeerError> {
        let Some(meta) = self.t.meta().cloned() else {
            return Ok(());
        };
        let n = meta.layout.num_pieces();
        self.limits = Limits::with_pieces(n);
        self.meta_inflight.clear();
        let mut bits = match self.raw_bits.take() {
            Some(raw) => {
                Bitfield::from_bytes(&raw, n).ok_or(PeerError::Protocol("bad bitfield"))?
            }
            None => Bitfield::new(n),
        };
        for (byte_i, byte) in self.raw_haves.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (0x80 >> bit) != 0 {
                    let i = u32::try_from(byte_i).unwrap_or(u32::MAX).saturating_mul(8) + bit;
                    if !bits.set(i, true) {
                        return Err(PeerError::Protocol("have out of range"));
                    }
                }
            }
        }
        self.raw_haves = Vec::new();
        self.meta = Some(meta);
        let mut st = self.t.state();
        if let Some(p) = st.picker.as_mut() {
            p.add_peer_bits(&bits);
            let want = p.interesting(&bits);
            if announce_ours {
                // Too late for a bitfield: announce resumed pieces one by one.
                for i in p.bitfield().iter() {
                    encode(&Message::Have { index: i }, &mut self.out);
                }
            }
            drop(st);
            self.set_interest(want);
        }
        self.bits = Some(bits);
        Ok(())
    }

    /// Tops the request pipeline up to the target queue depth.
    fn fill_requests(&mut self) {
        if self.meta.is_none() {
            return;
        }
        let Some(bits) = self.bits.as_ref() else {
            return;
        };
        if self.interest_dirty && self.am_interested {
            self.interest_dirty = false;
            let want = self
                .t
                .state()
                .picker
                .as_ref()
                .is_some_and(|p| p.interesting(bits));
            if !want && self.outstanding.is_empty() {
                self.set_interest(false);
            }
        }
        if self.peer_choking || !self.am_interested {
            return;
        }
        let target = if self.snubbed {
            1
        } else {
            self.queue_target.min(self.their_reqq).max(1)
        };
        if self.outstanding.len() >= target {
            return;
        }
        let Some(bits) = self.bits.as_ref() else {
            return;
        };
        let want = target - self.outstanding.len();
        // Batch small top-ups on deep queues (fewer lock round-trips and writes).
        if !self.outstanding.is_empty() && want < (target / 16).max(1) {
            return;
        }
        let blocks_per_piece = self.meta.as_ref().map_or(1, |m| {
            (m.layout.piece_length() / u64::from(BLOCK_SIZE)).max(1) as usize
        });
        let fast = target >= blocks_per_piece;
        let (reqs, interesting) = {
            let mut st = self.t.state();
            let Some(p) = st.picker.as_mut() else {
                return;
            };
            let reqs = p.pick(self.key, bits, want, fast);
            let interesting = !reqs.is_empty() || p.interesting(bits);
            (reqs, interesting)
        };
        if self.outstanding.is_empty() && !reqs.is_empty() {
            self.last_block = Instant::now();
        }
        for r in &reqs {
            self.outstanding.insert((r.index, r.begin), r.length);
            encode(&Message::Request(*r), &mut self.out);
        }
        if !reqs.is_empty() {
            self.window_active = true;
        }
        if !interesting && self.outstanding.is_empty() {
            self.set_interest(false);
        }
    }

    /// Gives back every block requested from this peer.
    fn release_all(&mut self) {
        self.outstanding.clear();
        let mut st = self.t.state();
        if let Some(p) = st.picker.as_mut() {
            p.release_peer(self.key);
        }
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
        // Rate and pipeline depth: queue = rate × window ÷ 16 KiB, clamped.
        let dt = now.duration_since(self.rate_at).as_secs_f64();
        if dt >= 1.0 {
            let r = self.window_bytes as f64 / dt;
            self.rate = if self.rate == 0.0 {
                r
            } else {
                0.5 * self.rate + 0.5 * r
            };
            if self.window_active && !self.snubbed && self.window_bytes > 0 {
                let q = (self.rate * cfg.queue_window.as_secs_f64() / f64::from(BLOCK_SIZE)).ceil()
                    as usize;
                self.queue_target = q.clamp(cfg.min_queue.max(1), cfg.max_queue.max(1));
            }
            self.window_bytes = 0;
            self.window_active = !self.outstanding.is_empty();
            self.rate_at = now;
        }
        if !self.outstanding.is_empty()
            && !self.snubbed
            && now.duration_since(self.last_block) > cfg.snub_timeout
        {
            tracing::debug!(addr = %self.addr, "peer snubbed");
            self.snubbed = true;
            self.release_all();
        }
        // Metadata requests that went unanswered go to someone else.
        let expired: Vec<u32> = self
            .meta_inflight
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > cfg.metadata_timeout)
            .map(|(&p, _)| p)
            .collect();
        if !expired.is_empty() {
            let mut st = self.t.state();
            if let Some(a) = st.meta_x.assembler.as_mut() {
                for p in &expired {
                    a.release(*p, self.key);
                }
            }
            if st.meta_x.exclusive == Some(self.key) {
                st.meta_x.exclusive = None;
                self.meta_rejected = true;
            }
            drop(st);
            self.meta_timeouts += expired.len() as u32;
            for p in expired {
                self.meta_inflight.remove(&p);
            }
            if self.meta_timeouts >= MAX_METADATA_TIMEOUTS {
                return Err(PeerError::Timeout);
            }
        }
        self.request_metadata();
        Ok(())
    }

    /// Returns everything this peer held to the shared state.
    fn cleanup(&mut self) {
        let mut st = self.t.state();
        st.peers.remove(&self.key);
        if let Some(p) = st.picker.as_mut() {
            p.release_peer(self.key);
            if let Some(bits) = &self.bits {
                p.remove_peer_bits(bits);
            }
        }
        if let Some(a) = st.meta_x.assembler.as_mut() {
            a.release_peer(self.key);
        }
        if st.meta_x.exclusive == Some(self.key) {
            st.meta_x.exclusive = None;
        }
    }
}
