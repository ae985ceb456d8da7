//! BEP 9 `ut_metadata` on one connection: fetching the info dictionary from peers (by the
//! size each claims: a liar's size gets its own assembler, fails alone and is banned, while
//! honest peers' size goes on) and serving ours.

use std::sync::Arc;
use std::time::Instant;

use super::{Conn, PeerError};
use crate::engine::events::{Cmd, Event};
use crate::engine::picker::PeerKey;
use crate::engine::torrent::{SizeCandidate, MAX_METADATA_SIZES};
use crate::wire::{
    encode, encode_extended_header, Message, MetadataAssembler, MetadataError, MetadataMessage,
    Received, METADATA_PIECE_LEN,
};

/// Metadata requests a peer may leave unanswered before we drop it (a peer that advertises
/// metadata and never sends it would otherwise hold a metadata-only fetch forever).
const MAX_METADATA_TIMEOUTS: u32 = 2;

impl Conn {
    /// The peer's extension handshake named a `metadata_size`: join (or start) the assembler
    /// for that size.
    pub(super) fn on_metadata_size(&mut self, size: Option<u64>) -> Result<(), PeerError> {
        if self.t.meta().is_some() || self.their_ut_meta.is_none() {
            return Ok(());
        }
        let Some(size) = size else { return Ok(()) };
        {
            let mut st = self.t.state();
            let mx = &mut st.meta_x;
            if mx.done {
                return Ok(());
            }
            if mx.get(size).is_none() {
                if mx.by_size.len() >= MAX_METADATA_SIZES {
                    // Too many conflicting claims: this peer's is not tried.
                    return Ok(());
                }
                mx.by_size.push(SizeCandidate {
                    asm: MetadataAssembler::new(
                        self.t.info_hash,
                        size,
                        self.t.cfg.max_metadata_size,
                    )?,
                    single_source: false,
                    exclusive: None,
                });
            }
        }
        self.meta_size = Some(size);
        self.request_metadata();
        Ok(())
    }

    /// Asks this peer for metadata pieces nobody else is fetching.
    pub(super) fn request_metadata(&mut self) {
        if self.meta.is_some() || self.meta_rejected {
            return;
        }
        let (Some(their_id), Some(size)) = (self.their_ut_meta, self.meta_size) else {
            return;
        };
        let mut max = self.t.cfg.metadata_requests_per_peer.max(1);
        let now = Instant::now();
        let mut st = self.t.state();
        if st.meta_x.done {
            return;
        }
        let Some(c) = st.meta_x.get(size) else {
            return;
        };
        if c.single_source {
            match c.exclusive {
                None => c.exclusive = Some(self.key),
                Some(k) if k != self.key => return,
                _ => {}
            }
            max = usize::MAX;
        }
        while self.meta_inflight.len() < max {
            let Some(piece) = c.asm.next_request(self.key) else {
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

    pub(super) fn on_ut_metadata(&mut self, payload: &[u8]) -> Result<(), PeerError> {
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
                if let Some(c) = self.meta_size.and_then(|s| st.meta_x.get(s)) {
                    c.asm.release(piece, self.key);
                    if c.exclusive == Some(self.key) {
                        c.exclusive = None;
                    }
                }
            }
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                if self.t.meta().is_some() {
                    return Ok(());
                }
                if self.meta_inflight.remove(&piece).is_none() {
                    // Pieces nobody asked for could overwrite what an honest peer is sending.
                    return Err(PeerError::Dropped("unrequested metadata piece"));
                }
                let Some(size) = self.meta_size else {
                    return Err(PeerError::Dropped("metadata without a size"));
                };
                let result = {
                    let mut st = self.t.state();
                    st.meta_x
                        .get(size)
                        .map(|c| c.asm.receive(self.key, piece, total_size, &data))
                };
                match result {
                    None | Some(Ok(Received::Duplicate)) => {}
                    Some(Ok(Received::Stored)) => self.request_metadata(),
                    Some(Ok(Received::Complete(bytes))) => {
                        tracing::debug!(len = bytes.len(), "metadata complete");
                        {
                            let mut st = self.t.state();
                            st.meta_x.done = true;
                            st.meta_x.by_size.clear();
                        }
                        let _ = self.t.events.send(Event::Metadata(bytes));
                    }
                    Some(Err(MetadataError::HashMismatch { peers })) => {
                        return self.on_bad_metadata(size, &peers);
                    }
                    Some(Err(e)) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    /// The metadata assembled for `size` did not hash to the info-hash.
    fn on_bad_metadata(&mut self, size: u64, peers: &[PeerKey]) -> Result<(), PeerError> {
        self.meta_inflight.clear();
        if let [culprit] = peers {
            // One sender: certainly the liar; its size claim goes with it.
            {
                let mut st = self.t.state();
                st.meta_x.by_size.retain(|c| c.asm.total_size() != size);
                if *culprit != self.key {
                    if let Some(p) = st.peers.get(culprit) {
                        let _ = self.t.events.send(Event::Ban(p.addr.ip()));
                        let _ = p.tx.send(Cmd::Close("sent bad metadata"));
                    }
                }
            }
            if *culprit == self.key {
                let _ = self.t.events.send(Event::Ban(self.addr.ip()));
                return Err(PeerError::Dropped("sent bad metadata"));
            }
        } else {
            // Unknown which of several peers lied: fetch from one at a time from now on.
            let mut st = self.t.state();
            if let Some(c) = st.meta_x.get(size) {
                c.single_source = true;
                c.exclusive = None;
            }
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

    /// Metadata requests that went unanswered go to someone else; a peer that keeps ignoring
    /// them is dropped.
    pub(super) fn metadata_tick(&mut self, now: Instant) -> Result<(), PeerError> {
        let cfg = Arc::clone(&self.t.cfg);
        let expired: Vec<u32> = self
            .meta_inflight
            .iter()
            .filter(|(_, at)| now.duration_since(**at) > cfg.metadata_timeout)
            .map(|(&p, _)| p)
            .collect();
        if !expired.is_empty() {
            let mut st = self.t.state();
            if let Some(c) = self.meta_size.and_then(|s| st.meta_x.get(s)) {
                for p in &expired {
                    c.asm.release(*p, self.key);
                }
                if c.exclusive == Some(self.key) {
                    c.exclusive = None;
                    self.meta_rejected = true;
                }
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
}
