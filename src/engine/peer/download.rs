//! The downloading half of a connection: what the peer has (bitfield, have, BEP 6
//! have_all/have_none), whether it interests us, the request pipeline sized to its rate,
//! snubbing, and received blocks (copied once into the piece's buffer; a complete piece goes
//! to the hashers).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::{Conn, PeerError};
use crate::engine::events::Cmd;
use crate::engine::hasher::HashJob;
use crate::engine::picker::BlockOutcome;
use crate::torrent::{Bitfield, BLOCK_SIZE};
use crate::wire::{encode, BlockRequest, Limits, Message};

/// Most allowed-fast pieces we remember per peer (BEP 6 sets are ~10).
const MAX_ALLOWED_FAST: usize = 64;

/// Deepest request queue (in blocks) at a seed that the picker spares
/// ([`crate::engine::picker::Picker::spares_seed`]: other peers unchoke us too):
/// `rate × window ÷ 16 KiB`, but at least one piece (so it is asked for whole) and at least
/// `min_queue`. Every piece we have requested from such a seed is one the rest of the crowd
/// cannot see yet and may ask it for as well; with a 1 s queue at a seed capped at 4 MB/s
/// and 8 of 20 downloaders unchoked, ~60 pieces are reserved at once and the seed sends
/// about half the file twice. The caller still applies the normal (rate × 1 s) target when
/// that is smaller.
pub(crate) fn spared_seed_queue(
    rate: f64,
    window: std::time::Duration,
    blocks_per_piece: usize,
    min_queue: usize,
) -> usize {
    let by_rate = (rate.max(0.0) * window.as_secs_f64() / f64::from(BLOCK_SIZE)).ceil();
    // A float to usize `as` saturates (and maps NaN to 0).
    (by_rate as usize)
        .max(blocks_per_piece)
        .max(min_queue)
        .max(1)
}

impl Conn {
    /// Metadata became known: validate what the peer told us before, start downloading.
    pub(super) fn on_meta_ready(&mut self, announce_ours: bool) -> Result<(), PeerError> {
        let Some(meta) = self.t.meta().cloned() else {
            return Ok(());
        };
        let n = meta.layout.num_pieces();
        self.limits = Limits::with_pieces(n);
        self.meta_inflight.clear();
        let mut bits = match (self.raw_bits.take(), self.raw_have_all.take()) {
            (Some(raw), _) => {
                Bitfield::from_bytes(&raw, n).ok_or(PeerError::Protocol("bad bitfield"))?
            }
            (None, Some(true)) => Bitfield::full(n),
            _ => Bitfield::new(n),
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
        self.allowed_in.retain(|&i| i < n);
        let want = {
            let mut st = self.t.state();
            st.picker.as_mut().map(|p| {
                p.add_peer_bits(&bits);
                p.interesting(&bits)
            })
        };
        if let Some(want) = want {
            if announce_ours {
                // Too late for a bitfield: announce resumed pieces one by one.
                self.send_have_state_late();
            }
            self.set_interest(want);
        }
        self.bits = Some(bits);
        self.report_source();
        Ok(())
    }

    pub(super) fn on_have(&mut self, index: u32) -> Result<(), PeerError> {
        if let Some(bits) = self.bits.as_mut() {
            if bits.get(index) {
                return Ok(());
            }
            if !bits.set(index, true) {
                return Err(PeerError::Protocol("have out of range"));
            }
            let now_seed = bits.count() == bits.len();
            let mut st = self.t.state();
            if let Some(p) = st.picker.as_mut() {
                p.add_have(index, Instant::now());
                if !self.am_interested && !p.has(index) {
                    self.am_interested = true;
                    encode(&Message::Interested, &mut self.out);
                }
            }
            drop(st);
            if now_seed {
                self.report_source();
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

    pub(super) fn on_bitfield(&mut self, raw: Vec<u8>) -> Result<(), PeerError> {
        let Some(meta) = &self.meta else {
            self.raw_bits = Some(raw);
            return Ok(());
        };
        let n = meta.layout.num_pieces();
        let bits = Bitfield::from_bytes(&raw, n).ok_or(PeerError::Protocol("bad bitfield"))?;
        self.replace_bits(bits);
        Ok(())
    }

    /// BEP 6 `have_all` (true) / `have_none` (false).
    pub(super) fn on_have_all(&mut self, all: bool) -> Result<(), PeerError> {
        let Some(meta) = &self.meta else {
            self.raw_have_all = Some(all);
            self.raw_bits = None;
            return Ok(());
        };
        let n = meta.layout.num_pieces();
        let bits = if all {
            Bitfield::full(n)
        } else {
            Bitfield::new(n)
        };
        self.replace_bits(bits);
        Ok(())
    }

    fn replace_bits(&mut self, bits: Bitfield) {
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
        self.report_source();
    }

    pub(super) fn set_interest(&mut self, want: bool) {
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

    /// BEP 6 reject: the peer will not send this block; someone else may.
    pub(super) fn on_reject(&mut self, r: BlockRequest) {
        if self.outstanding.remove(&(r.index, r.begin)).is_some() {
            if let Some(p) = self.t.state().picker.as_mut() {
                p.release(self.key, &r);
            }
        }
    }

    /// BEP 6 allowed-fast: we may request this piece even while choked.
    pub(super) fn on_allowed_fast(&mut self, index: u32) {
        let in_range = self
            .meta
            .as_ref()
            .is_none_or(|m| index < m.layout.num_pieces());
        if in_range && self.allowed_in.len() < MAX_ALLOWED_FAST {
            self.allowed_in.insert(index);
        }
    }

    pub(super) fn on_piece(
        &mut self,
        index: u32,
        begin: u32,
        data: &[u8],
    ) -> Result<(), PeerError> {
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
        let requested = self.outstanding.remove(&(index, begin)).is_some();
        if requested {
            self.last_block = Instant::now();
            if self.snubbed {
                self.snubbed = false;
                self.counters.snubbed.store(false, Ordering::Relaxed);
                self.queue_target = self.t.cfg.initial_queue.max(1);
            } else if self.rate == 0.0 && self.queue_target < self.slow_start_cap() {
                // Slow start (doubles per round trip) only until the first rate measurement,
                // and not past a few pieces' worth: a deep queue at a slow seed reserves
                // pieces the other downloaders will have sooner, and the seed sends them twice.
                self.queue_target += 1;
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
            if requested {
                // Tit-for-tat counts only blocks we asked for and still wanted.
                self.counters
                    .valid_down
                    .fetch_add(u64::from(len), Ordering::Relaxed);
            }
            let pool = &self.t.pool;
            let buf = st
                .buffers
                .entry(index)
                .or_insert_with(|| pool.take(size as usize));
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
                        events: self.t.events.clone(),
                        pool: Arc::clone(&self.t.pool),
                    });
                }
            }
        }
        Ok(())
    }

    /// Tops the request pipeline up to the target queue depth.
    pub(super) fn fill_requests(&mut self) {
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
        if !self.am_interested {
            return;
        }
        let Some(bits) = self.bits.as_ref() else {
            return;
        };
        // Choked: only allowed-fast pieces may be requested (BEP 6).
        let allowed_bits = if self.peer_choking {
            if self.allowed_in.is_empty() {
                return;
            }
            let mut b = Bitfield::new(bits.len());
            for &i in &self.allowed_in {
                if bits.get(i) {
                    b.set(i, true);
                }
            }
            Some(b)
        } else {
            None
        };
        let target = if self.snubbed {
            1
        } else {
            self.queue_target.min(self.their_reqq).max(1)
        };
        if self.outstanding.len() >= target {
            return;
        }
        let want = target - self.outstanding.len();
        // Batch small top-ups on deep queues (fewer lock round-trips and writes).
        if !self.outstanding.is_empty() && want < (target / 16).max(1) {
            return;
        }
        let blocks_per_piece = self.meta.as_ref().map_or(1, |m| {
            (m.layout.piece_length() / u64::from(BLOCK_SIZE)).max(1) as usize
        });
        let spared_cap = spared_seed_queue(
            self.rate,
            self.t.cfg.seed_queue_window,
            blocks_per_piece,
            self.t.cfg.min_queue,
        );
        let (reqs, interesting) = {
            let mut st = self.t.state();
            let Some(p) = st.picker.as_mut() else {
                return;
            };
            // A seed shared with a swarm: a shallow queue, so that the pieces we reserve at
            // it are few and the other downloaders rarely ask it for the same ones.
            let (target, want) = if p.spares_seed(self.key) && spared_cap < target {
                (
                    spared_cap,
                    spared_cap.saturating_sub(self.outstanding.len()),
                )
            } else {
                (target, want)
            };
            let fast = target >= blocks_per_piece;
            let reqs = if want == 0 {
                Vec::new()
            } else {
                let from = allowed_bits.as_ref().unwrap_or(bits);
                p.pick(self.key, from, want, fast, Instant::now())
            };
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

    /// Deepest queue slow start may reach before the peer's rate is measured.
    fn slow_start_cap(&self) -> usize {
        (self.t.cfg.initial_queue * 4)
            .min(self.t.cfg.max_queue)
            .max(1)
    }

    /// Tells the picker whether this peer is a seed and unchokes us (seed sparing).
    pub(super) fn report_source(&mut self) {
        let Some(bits) = self.bits.as_ref() else {
            return;
        };
        let seed = bits.count() == bits.len();
        let unchoking = !self.peer_choking;
        let mut st = self.t.state();
        if let Some(p) = st.picker.as_mut() {
            p.set_source(self.key, seed, unchoking);
        }
    }

    /// Gives back every block requested from this peer.
    pub(super) fn release_all(&mut self) {
        self.outstanding.clear();
        let mut st = self.t.state();
        if let Some(p) = st.picker.as_mut() {
            p.release_peer(self.key);
        }
    }

    /// Rate and pipeline depth (queue = rate × window ÷ 16 KiB, clamped) and snubbing.
    pub(super) fn update_rate(&mut self, now: Instant) {
        let cfg = Arc::clone(&self.t.cfg);
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
            self.counters.snubbed.store(true, Ordering::Relaxed);
            self.release_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::spared_seed_queue;
    use std::time::Duration;

    #[test]
    fn spared_seed_queue_is_a_quarter_second_but_at_least_one_piece() {
        let w = Duration::from_millis(250);
        // 500 kB/s from a capped seed: 125 kB = 8 blocks (not 1 s = 31).
        assert_eq!(spared_seed_queue(500_000.0, w, 4, 2), 8);
        // Unmeasured or very slow: one whole piece.
        assert_eq!(spared_seed_queue(0.0, w, 4, 2), 4);
        assert_eq!(spared_seed_queue(10_000.0, w, 64, 2), 64);
        // min_queue still holds for tiny pieces.
        assert_eq!(spared_seed_queue(0.0, w, 1, 3), 3);
        // Nonsense rates do not panic or overflow.
        assert_eq!(spared_seed_queue(f64::NAN, w, 4, 2), 4);
        assert_eq!(spared_seed_queue(-5.0, w, 4, 2), 4);
        assert_eq!(spared_seed_queue(f64::INFINITY, w, 4, 2), usize::MAX);
    }
}
