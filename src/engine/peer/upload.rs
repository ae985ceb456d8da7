//! The uploading half of a connection: the peer's interest and requests, our choking of it,
//! BEP 6 (have_all/have_none, reject, allowed-fast), and the writer task that owns the socket's
//! write half and serves queued requests from disk, within the session's upload limit.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};

use super::{Conn, PeerError};
use crate::engine::events::Event;
use crate::engine::torrent::{PeerCounters, Torrent};
use crate::sync::lock;
use crate::wire::{allowed_fast_set, encode, encode_piece_header, BlockRequest, Message};

/// Largest batch of blocks the writer reads from disk and sends in one go.
const SERVE_BATCH_BYTES: usize = 512 * 1024;

/// Size of the allowed-fast set we grant each peer (BEP 6 suggests 10).
const ALLOWED_FAST_K: usize = 10;

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

    /// Withdraws a request; true if it was still queued.
    pub(super) fn cancel(&self, r: &BlockRequest) -> bool {
        let mut q = lock(&self.q);
        let before = q.len();
        q.retain(|x| x != r);
        q.len() != before
    }

    /// Drops every queued request except those `keep` accepts, returning the dropped ones.
    fn drain_unless(&self, keep: impl Fn(&BlockRequest) -> bool) -> Vec<BlockRequest> {
        let mut q = lock(&self.q);
        let (kept, dropped): (Vec<_>, Vec<_>) = q.drain(..).partition(|r| keep(r));
        *q = kept.into();
        dropped
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
pub(super) async fn writer_task(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Vec<u8>>,
    serve: Arc<ServeQueue>,
    t: Arc<Torrent>,
    counters: Arc<PeerCounters>,
    queued: Arc<AtomicUsize>,
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
            queued.fetch_sub(c.len(), Ordering::Relaxed);
        }
        // Under an upload limit, smaller batches share the budget more evenly among peers.
        let batch = match t.upload_limit.rate() {
            Some(r) => (r as usize / 8).clamp(16 * 1024, SERVE_BATCH_BYTES),
            None => SERVE_BATCH_BYTES,
        };
        let reqs = serve.pop_batch(batch);
        if !reqs.is_empty() {
            let Some(meta) = t.meta().cloned() else {
                continue;
            };
            let payload: u64 = reqs.iter().map(|r| u64::from(r.length)).sum();
            t.upload_limit.acquire(payload).await;
            let corrupt = t.corrupt.clone();
            let mut buf = std::mem::take(&mut spare);
            let res = tokio::task::spawn_blocking(move || {
                buf.clear();
                for r in &reqs {
                    encode_piece_header(r.index, r.begin, r.length, &mut buf);
                    let start = buf.len();
                    buf.resize(start + r.length as usize, 0);
                    let dst = buf.get_mut(start..).unwrap_or_default();
                    meta.read_block_into(r, dst)?;
                    if corrupt.as_ref().is_some_and(|c| c(r.index)) {
                        dst.iter_mut().for_each(|b| *b ^= 0x5A);
                    }
                }
                Ok::<_, crate::torrent::StorageError>(buf)
            })
            .await
            .map_err(|_| PeerError::Shutdown)?;
            let buf = res.map_err(|_| PeerError::Dropped("cannot read block"))?;
            wr.write_all(&buf).await?;
            counters.up.fetch_add(payload, Ordering::Relaxed);
            t.uploaded.fetch_add(payload, Ordering::Relaxed);
            spare = buf;
            continue;
        }
        tokio::select! {
            b = rx.recv() => match b {
                Some(b) => {
                    wr.write_all(&b).await?;
                    queued.fetch_sub(b.len(), Ordering::Relaxed);
                }
                None => return Ok(()),
            },
            _ = serve.notify.notified() => {}
        }
    }
}

impl Conn {
    /// What we have, as the first message after the handshakes: BEP 6 have_all/have_none
    /// when both sides speak it, else a bitfield (nothing when we have nothing); then the
    /// allowed-fast set we grant.
    pub(super) fn send_have_state(&mut self) {
        if self.t.meta().is_none() {
            if self.fast {
                encode(&Message::HaveNone, &mut self.out);
            }
            return;
        }
        let bits = self.t.state().picker.as_ref().map(|p| p.bitfield());
        let Some(bits) = bits else {
            if self.fast {
                encode(&Message::HaveNone, &mut self.out);
            }
            return;
        };
        if self.fast && bits.is_complete() {
            encode(&Message::HaveAll, &mut self.out);
        } else if self.fast && bits.count() == 0 {
            encode(&Message::HaveNone, &mut self.out);
        } else if bits.count() > 0 {
            encode(&Message::Bitfield(bits.as_bytes().to_vec()), &mut self.out);
        }
        self.grant_allowed_fast();
    }

    /// Metadata arrived after the handshake: what we have (resumed pieces) goes out as `have`s.
    pub(super) fn send_have_state_late(&mut self) {
        let bits = self.t.state().picker.as_ref().map(|p| p.bitfield());
        if let Some(bits) = bits {
            for i in bits.iter() {
                encode(&Message::Have { index: i }, &mut self.out);
            }
        }
        self.grant_allowed_fast();
    }

    /// BEP 6: pieces this peer may request while we choke it, so a newcomer can get its first
    /// pieces (and start trading) before it wins a slot.
    fn grant_allowed_fast(&mut self) {
        if !self.fast || !self.allowed_out.is_empty() {
            return;
        }
        let Some(meta) = self.meta.as_ref().or(self.t.meta()) else {
            return;
        };
        let n = meta.layout.num_pieces();
        let set = allowed_fast_set(self.addr.ip(), &self.t.info_hash, n, ALLOWED_FAST_K);
        let have: Vec<u32> = {
            let st = self.t.state();
            let Some(p) = st.picker.as_ref() else { return };
            set.into_iter().filter(|&i| p.has(i)).collect()
        };
        for &i in &have {
            encode(&Message::AllowedFast(i), &mut self.out);
        }
        self.allowed_out = have;
    }

    pub(super) fn on_interest(&mut self, interested: bool) {
        if !interested {
            let dropped = self.serve.drain_unless(|_| false);
            self.reject_all(dropped);
        }
        if interested != self.peer_interested {
            self.peer_interested = interested;
            self.counters
                .interested
                .store(interested, Ordering::Relaxed);
            let _ = self.t.events.send(Event::Interest);
        }
    }

    /// Our choke decision for this peer (from the choker).
    pub(super) fn set_choking(&mut self, choke: bool) {
        if choke == self.am_choking {
            return;
        }
        self.am_choking = choke;
        if choke {
            let allowed = self.allowed_out.clone();
            let dropped = self.serve.drain_unless(|r| allowed.contains(&r.index));
            encode(&Message::Choke, &mut self.out);
            self.reject_all(dropped);
        } else {
            encode(&Message::Unchoke, &mut self.out);
        }
    }

    /// BEP 6: requests we drop get an explicit reject (without the extension, choke says it).
    fn reject_all(&mut self, dropped: Vec<BlockRequest>) {
        if self.fast {
            for r in dropped {
                encode(&Message::Reject(r), &mut self.out);
            }
        }
    }

    pub(super) fn on_request(&mut self, r: BlockRequest) -> Result<(), PeerError> {
        let Some(meta) = &self.meta else {
            self.reject_all(vec![r]);
            return Ok(());
        };
        let size = meta
            .layout
            .piece_size(r.index)
            .map_err(|_| PeerError::Protocol("request out of range"))?;
        if u64::from(r.begin) + u64::from(r.length) > u64::from(size) {
            return Err(PeerError::Protocol("request beyond piece end"));
        }
        let allowed = !self.am_choking || self.allowed_out.contains(&r.index);
        let have = self
            .t
            .state()
            .picker
            .as_ref()
            .is_some_and(|p| p.has(r.index));
        if !allowed || !have {
            // BEP 3: requests while choked are dropped; BEP 6: and rejected.
            self.reject_all(vec![r]);
            return Ok(());
        }
        if !self.serve.push(r, self.t.cfg.max_requests_per_peer) {
            return Err(PeerError::TooManyRequests);
        }
        Ok(())
    }
}
