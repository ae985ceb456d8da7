//! BEP 9 `ut_metadata`: fetching a torrent's info dictionary from peers, 16 KiB at a time.
//!
//! With only a magnet link we know the info-hash but not the info dictionary. Peers that
//! advertise `ut_metadata` and `metadata_size` in their extension handshake serve it in pieces;
//! the [`MetadataAssembler`] tracks which pieces are missing or in flight, and once all have
//! arrived verifies that the SHA-1 of the whole buffer equals the info-hash.

use bt_bencode::Value;
use sha1::{Digest, Sha1};
use thiserror::Error;

use super::extension::{non_negative, parse_value, put_bytes, put_int, ExtensionError};
use crate::id::Id;

/// Size of every metadata piece except possibly the last.
pub const METADATA_PIECE_LEN: usize = 16 * 1024;

/// Name of the extension in the extension handshake's `m` dictionary.
pub const UT_METADATA: &str = "ut_metadata";

/// Why a `ut_metadata` message or piece was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    /// The bencoded dictionary is malformed, not a dictionary, or has negative numbers.
    #[error("bad ut_metadata dictionary")]
    Bencode(#[from] ExtensionError),
    /// A required key is missing or has the wrong type.
    #[error("ut_metadata message lacks {0}")]
    MissingField(&'static str),
    /// A `msg_type` we do not know (BEP 9 says to ignore such messages).
    #[error("unknown ut_metadata msg_type {0}")]
    UnknownMsgType(u64),
    /// A piece index that does not fit in 32 bits, or is beyond the metadata's pieces.
    #[error("metadata piece {piece} out of range ({num_pieces} pieces)")]
    PieceOutOfRange {
        /// The index received.
        piece: u64,
        /// Number of pieces in the metadata (0 when unknown).
        num_pieces: u32,
    },
    /// A data message carrying more than 16 KiB.
    #[error("metadata piece of {len} bytes exceeds 16 KiB")]
    PieceTooLarge {
        /// Received length.
        len: usize,
    },
    /// A piece whose length is not exactly what its index requires.
    #[error("metadata piece {piece} has {len} bytes, expected {expected}")]
    WrongPieceSize {
        /// Piece index.
        piece: u32,
        /// Received length.
        len: usize,
        /// Required length.
        expected: usize,
    },
    /// The metadata size is zero or above our cap.
    #[error("metadata size {size} not in 1..={max}")]
    BadSize {
        /// Advertised size.
        size: u64,
        /// Our cap.
        max: u64,
    },
    /// A data message advertises a different `total_size` than the one we are assembling.
    #[error("total_size {got} differs from expected {expected}")]
    TotalSizeMismatch {
        /// Size in the message.
        got: u64,
        /// Size being assembled.
        expected: u64,
    },
    /// All pieces arrived but their SHA-1 is not the info-hash. All pieces were discarded;
    /// `peers` lists every peer that supplied one (sorted, deduplicated) so the caller can
    /// distrust them — with one contributor the culprit is certain.
    #[error("metadata hash mismatch (pieces from {} peers)", peers.len())]
    HashMismatch {
        /// Peers that supplied pieces of the rejected buffer.
        peers: Vec<u64>,
    },
}

/// One `ut_metadata` message (the payload of an Extended message with our `ut_metadata` id).
#[derive(Clone, PartialEq, Eq)]
pub enum MetadataMessage {
    /// `msg_type` 0: please send piece `piece`.
    Request {
        /// Piece index.
        piece: u32,
    },
    /// `msg_type` 1: piece `piece` of a `total_size`-byte info dictionary.
    Data {
        /// Piece index.
        piece: u32,
        /// Size of the whole info dictionary.
        total_size: u64,
        /// The piece's bytes (those following the bencoded dictionary).
        data: Vec<u8>,
    },
    /// `msg_type` 2: the peer will not send piece `piece`.
    Reject {
        /// Piece index.
        piece: u32,
    },
}

impl std::fmt::Debug for MetadataMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetadataMessage::Request { piece } => write!(f, "Request {{ piece: {piece} }}"),
            MetadataMessage::Reject { piece } => write!(f, "Reject {{ piece: {piece} }}"),
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => write!(
                f,
                "Data {{ piece: {piece}, total_size: {total_size}, len: {} }}",
                data.len()
            ),
        }
    }
}

impl MetadataMessage {
    /// Decodes a `ut_metadata` payload.
    ///
    /// Data messages carry the raw piece after the bencoded dictionary; its end is found with
    /// the bounded scanner, and the piece may not exceed 16 KiB. Extra dictionary keys are
    /// ignored. Unknown `msg_type`s are reported as [`MetadataError::UnknownMsgType`] so the
    /// caller can ignore them as BEP 9 asks.
    pub fn decode(payload: &[u8]) -> Result<Self, MetadataError> {
        let dict_len =
            super::bencode_scan::bencode_value_len(payload, super::extension::MAX_EXTENSION_DEPTH)
                .map_err(ExtensionError::from)?;
        let value = parse_value(payload)?;
        let dict = value
            .as_dict()
            .ok_or(MetadataError::Bencode(ExtensionError::NotADict))?;
        let int = |key: &'static str| -> Result<u64, MetadataError> {
            let v: &Value = dict
                .get(key.as_bytes())
                .ok_or(MetadataError::MissingField(key))?;
            non_negative(v, key)?.ok_or(MetadataError::MissingField(key))
        };
        let msg_type = int("msg_type")?;
        let piece_raw = int("piece")?;
        let piece = u32::try_from(piece_raw).map_err(|_| MetadataError::PieceOutOfRange {
            piece: piece_raw,
            num_pieces: 0,
        })?;
        match msg_type {
            0 => Ok(MetadataMessage::Request { piece }),
            1 => {
                let total_size = int("total_size")?;
                let data = payload.get(dict_len..).unwrap_or_default();
                if data.len() > METADATA_PIECE_LEN {
                    return Err(MetadataError::PieceTooLarge { len: data.len() });
                }
                Ok(MetadataMessage::Data {
                    piece,
                    total_size,
                    data: data.to_vec(),
                })
            }
            2 => Ok(MetadataMessage::Reject { piece }),
            other => Err(MetadataError::UnknownMsgType(other)),
        }
    }

    /// Appends the encoded payload (dictionary, plus the raw piece for data messages).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            MetadataMessage::Request { piece } => put_dict(out, 0, *piece, None),
            MetadataMessage::Reject { piece } => put_dict(out, 2, *piece, None),
            MetadataMessage::Data {
                piece,
                total_size,
                data,
            } => {
                Self::encode_data_header(*piece, *total_size, out);
                out.extend_from_slice(data);
            }
        }
    }

    /// Appends only the dictionary of a data message, so the piece can be written after it
    /// straight from the info-dictionary buffer.
    pub fn encode_data_header(piece: u32, total_size: u64, out: &mut Vec<u8>) {
        put_dict(out, 1, piece, Some(total_size));
    }
}

/// Writes `{msg_type, piece[, total_size]}` with keys in bencode order.
fn put_dict(out: &mut Vec<u8>, msg_type: u64, piece: u32, total_size: Option<u64>) {
    out.push(b'd');
    put_bytes(out, b"msg_type");
    put_int(out, msg_type);
    put_bytes(out, b"piece");
    put_int(out, u64::from(piece));
    if let Some(size) = total_size {
        put_bytes(out, b"total_size");
        put_int(out, size);
    }
    out.push(b'e');
}

/// State of one metadata piece in the assembler.
#[derive(Clone, Debug)]
enum Slot {
    /// Neither received nor in flight.
    Missing,
    /// Requested from `peer`, not yet answered.
    Requested { peer: u64 },
    /// Received from `peer`.
    Have { peer: u64, data: Vec<u8> },
}

/// What [`MetadataAssembler::receive`] did with a piece.
#[derive(Clone, PartialEq, Eq)]
pub enum Received {
    /// Stored; more pieces are still needed.
    Stored,
    /// We already had this piece (or the metadata is complete); the data was dropped.
    Duplicate,
    /// That was the last piece and the whole buffer hashes to the info-hash: the verified
    /// info dictionary. The assembler is finished afterwards.
    Complete(Vec<u8>),
}

impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Received::Stored => write!(f, "Stored"),
            Received::Duplicate => write!(f, "Duplicate"),
            Received::Complete(b) => write!(f, "Complete({} bytes)", b.len()),
        }
    }
}

/// Rebuilds an info dictionary from `ut_metadata` pieces and verifies it against the
/// info-hash.
///
/// Peers are identified by an opaque `u64` the caller chooses (e.g. a connection id), so the
/// assembler can hand pieces out per peer, take them back when a peer rejects or disconnects,
/// and name the suppliers of a buffer that failed verification. Memory grows only with the
/// pieces actually received, never with the advertised size alone.
#[derive(Clone, Debug)]
pub struct MetadataAssembler {
    info_hash: Id,
    total_size: usize,
    slots: Vec<Slot>,
    have: usize,
    done: bool,
}

impl MetadataAssembler {
    /// Starts assembling `total_size` bytes of metadata for `info_hash`.
    ///
    /// Fails with [`MetadataError::BadSize`] when `total_size` is 0 or above `max_size`
    /// (use [`super::DEFAULT_MAX_METADATA_SIZE`] unless configured otherwise).
    pub fn new(info_hash: Id, total_size: u64, max_size: u64) -> Result<Self, MetadataError> {
        let bad = MetadataError::BadSize {
            size: total_size,
            max: max_size,
        };
        if total_size == 0 || total_size > max_size {
            return Err(bad);
        }
        let total = usize::try_from(total_size).map_err(|_| bad.clone())?;
        let pieces = total.div_ceil(METADATA_PIECE_LEN);
        if u32::try_from(pieces).is_err() {
            return Err(bad);
        }
        Ok(MetadataAssembler {
            info_hash,
            total_size: total,
            slots: vec![Slot::Missing; pieces],
            have: 0,
            done: false,
        })
    }

    /// The info-hash being fetched.
    pub fn info_hash(&self) -> Id {
        self.info_hash
    }

    /// Size of the whole info dictionary in bytes.
    pub fn total_size(&self) -> u64 {
        self.total_size as u64
    }

    /// Number of 16 KiB pieces.
    pub fn num_pieces(&self) -> u32 {
        u32::try_from(self.slots.len()).unwrap_or(u32::MAX)
    }

    /// Number of pieces received so far.
    pub fn pieces_received(&self) -> u32 {
        u32::try_from(self.have).unwrap_or(u32::MAX)
    }

    /// Whether the verified buffer has been returned.
    pub fn is_complete(&self) -> bool {
        self.done
    }

    /// Exact size of piece `piece`: 16 KiB, except the last which holds the remainder.
    pub fn piece_len(&self, piece: u32) -> Option<usize> {
        let idx = usize::try_from(piece).ok()?;
        if idx >= self.slots.len() {
            return None;
        }
        let start = idx.checked_mul(METADATA_PIECE_LEN)?;
        Some((self.total_size - start).min(METADATA_PIECE_LEN))
    }

    /// Pieces that are neither received nor requested, in index order.
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.indexed()
            .filter(|(_, s)| matches!(s, Slot::Missing))
            .map(|(i, _)| i)
    }

    /// Pieces currently requested from `peer`.
    pub fn requested_from(&self, peer: u64) -> impl Iterator<Item = u32> + '_ {
        self.indexed()
            .filter(move |(_, s)| matches!(s, Slot::Requested { peer: p } if *p == peer))
            .map(|(i, _)| i)
    }

    fn indexed(&self) -> impl Iterator<Item = (u32, &Slot)> {
        (0u32..).zip(self.slots.iter())
    }

    /// Picks the first missing piece, marks it requested from `peer`, and returns its index.
    /// `None` when every piece is received or already in flight.
    pub fn next_request(&mut self, peer: u64) -> Option<u32> {
        if self.done {
            return None;
        }
        let (idx, slot) = (0u32..)
            .zip(self.slots.iter_mut())
            .find(|(_, s)| matches!(s, Slot::Missing))?;
        *slot = Slot::Requested { peer };
        Some(idx)
    }

    /// Marks `piece` as requested from `peer` (e.g. to re-request a slow piece elsewhere).
    /// Returns false if the piece is out of range or already received.
    pub fn mark_requested(&mut self, piece: u32, peer: u64) -> bool {
        match self.slot_mut(piece) {
            Some(slot @ (Slot::Missing | Slot::Requested { .. })) => {
                *slot = Slot::Requested { peer };
                true
            }
            _ => false,
        }
    }

    /// `peer` rejected (or timed out on) `piece`: make it missing again if it was requested
    /// from that peer.
    pub fn release(&mut self, piece: u32, peer: u64) {
        if let Some(slot) = self.slot_mut(piece) {
            if matches!(slot, Slot::Requested { peer: p } if *p == peer) {
                *slot = Slot::Missing;
            }
        }
    }

    /// `peer` disconnected: every piece requested from it becomes missing again.
    pub fn release_peer(&mut self, peer: u64) {
        for slot in &mut self.slots {
            if matches!(slot, Slot::Requested { peer: p } if *p == peer) {
                *slot = Slot::Missing;
            }
        }
    }

    fn slot_mut(&mut self, piece: u32) -> Option<&mut Slot> {
        usize::try_from(piece)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
    }

    /// Accepts piece `piece` from `peer`, as carried by a data message advertising
    /// `total_size`.
    ///
    /// Checks the advertised total size, the piece index and the exact piece length; stores
    /// the piece (requested or not — the final hash check covers unsolicited data). When the
    /// last piece arrives, hashes the whole buffer: on a match returns
    /// [`Received::Complete`]; on a mismatch discards every piece (all become missing again)
    /// and returns [`MetadataError::HashMismatch`] naming the contributing peers.
    pub fn receive(
        &mut self,
        peer: u64,
        piece: u32,
        total_size: u64,
        data: &[u8],
    ) -> Result<Received, MetadataError> {
        if total_size != self.total_size() {
            return Err(MetadataError::TotalSizeMismatch {
                got: total_size,
                expected: self.total_size(),
            });
        }
        let num_pieces = self.num_pieces();
        let expected = self
            .piece_len(piece)
            .ok_or(MetadataError::PieceOutOfRange {
                piece: u64::from(piece),
                num_pieces,
            })?;
        if data.len() != expected {
            return Err(MetadataError::WrongPieceSize {
                piece,
                len: data.len(),
                expected,
            });
        }
        if self.done {
            return Ok(Received::Duplicate);
        }
        let slot = self.slot_mut(piece).ok_or(MetadataError::PieceOutOfRange {
            piece: u64::from(piece),
            num_pieces,
        })?;
        if matches!(slot, Slot::Have { .. }) {
            return Ok(Received::Duplicate);
        }
        *slot = Slot::Have {
            peer,
            data: data.to_vec(),
        };
        self.have += 1;
        if self.have < self.slots.len() {
            return Ok(Received::Stored);
        }
        self.finish()
    }

    /// Concatenates and verifies all pieces.
    fn finish(&mut self) -> Result<Received, MetadataError> {
        let mut buf = Vec::with_capacity(self.total_size);
        let mut peers = Vec::new();
        for slot in &self.slots {
            if let Slot::Have { peer, data } = slot {
                buf.extend_from_slice(data);
                peers.push(*peer);
            }
        }
        let digest: [u8; 20] = Sha1::digest(&buf).into();
        if buf.len() == self.total_size && digest == self.info_hash.0 {
            self.done = true;
            self.slots.iter_mut().for_each(|s| *s = Slot::Missing);
            return Ok(Received::Complete(buf));
        }
        peers.sort_unstable();
        peers.dedup();
        self.slots.iter_mut().for_each(|s| *s = Slot::Missing);
        self.have = 0;
        Err(MetadataError::HashMismatch { peers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::DEFAULT_MAX_METADATA_SIZE;

    fn enc(m: &MetadataMessage) -> Vec<u8> {
        let mut v = Vec::new();
        m.encode(&mut v);
        v
    }

    #[test]
    fn messages_round_trip() {
        let msgs = [
            MetadataMessage::Request { piece: 0 },
            MetadataMessage::Reject { piece: 7 },
            MetadataMessage::Data {
                piece: 1,
                total_size: 31_235,
                data: vec![b'e'; METADATA_PIECE_LEN],
            },
            MetadataMessage::Data {
                piece: 0,
                total_size: 3,
                data: b"d1e".to_vec(),
            },
        ];
        for m in msgs {
            assert_eq!(MetadataMessage::decode(&enc(&m)), Ok(m.clone()), "{m:?}");
        }
        assert_eq!(
            enc(&MetadataMessage::Request { piece: 0 }),
            b"d8:msg_typei0e5:piecei0ee"
        );
    }

    #[test]
    fn bep9_examples() {
        // The examples of BEP 9, plus trailing data.
        assert_eq!(
            MetadataMessage::decode(b"d8:msg_typei0e5:piecei0ee"),
            Ok(MetadataMessage::Request { piece: 0 })
        );
        assert_eq!(
            MetadataMessage::decode(b"d8:msg_typei1e5:piecei0e10:total_sizei34256eexxxxxxxx"),
            Ok(MetadataMessage::Data {
                piece: 0,
                total_size: 34256,
                data: b"xxxxxxxx".to_vec()
            })
        );
        assert_eq!(
            MetadataMessage::decode(b"d8:msg_typei2e5:piecei0ee"),
            Ok(MetadataMessage::Reject { piece: 0 })
        );
        // Extra keys are tolerated (libtorrent adds some).
        assert_eq!(
            MetadataMessage::decode(b"d1:ai1e8:msg_typei0e5:piecei3e1:zli1eee"),
            Ok(MetadataMessage::Request { piece: 3 })
        );
    }

    #[test]
    fn bad_messages() {
        let dec = MetadataMessage::decode;
        assert_eq!(
            dec(b"d5:piecei0ee"),
            Err(MetadataError::MissingField("msg_type"))
        );
        assert_eq!(
            dec(b"d8:msg_typei0ee"),
            Err(MetadataError::MissingField("piece"))
        );
        assert_eq!(
            dec(b"d8:msg_type1:05:piecei0ee"),
            Err(MetadataError::MissingField("msg_type"))
        );
        assert_eq!(
            dec(b"d8:msg_typei1e5:piecei0eeabc"),
            Err(MetadataError::MissingField("total_size"))
        );
        assert_eq!(
            dec(b"d8:msg_typei7e5:piecei0ee"),
            Err(MetadataError::UnknownMsgType(7))
        );
        assert!(matches!(
            dec(b"d8:msg_typei0e5:piecei-1ee"),
            Err(MetadataError::Bencode(ExtensionError::Negative { .. }))
        ));
        assert!(matches!(
            dec(b"d8:msg_typei0e5:piecei4294967296ee"),
            Err(MetadataError::PieceOutOfRange { .. })
        ));
        assert!(matches!(dec(b"le"), Err(MetadataError::Bencode(_))));
        assert!(matches!(dec(b"d8:msg_ty"), Err(MetadataError::Bencode(_))));
        assert!(matches!(dec(&[b'd'; 5000]), Err(MetadataError::Bencode(_))));
        let mut big = b"d8:msg_typei1e5:piecei0e10:total_sizei99999ee".to_vec();
        big.extend(vec![0u8; METADATA_PIECE_LEN + 1]);
        assert_eq!(
            dec(&big),
            Err(MetadataError::PieceTooLarge {
                len: METADATA_PIECE_LEN + 1
            })
        );
    }

    fn info(len: usize) -> (Vec<u8>, Id) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let hash: [u8; 20] = Sha1::digest(&bytes).into();
        (bytes, Id(hash))
    }

    #[test]
    fn assembles_and_verifies() {
        let total = 2 * METADATA_PIECE_LEN + 100;
        let (bytes, hash) = info(total);
        let mut a = MetadataAssembler::new(hash, total as u64, DEFAULT_MAX_METADATA_SIZE).unwrap();
        assert_eq!(a.num_pieces(), 3);
        assert_eq!(a.piece_len(2), Some(100));
        assert_eq!(a.piece_len(3), None);
        assert_eq!(a.next_request(1), Some(0));
        assert_eq!(a.next_request(2), Some(1));
        assert_eq!(a.missing().collect::<Vec<_>>(), vec![2]);
        // Peer 2 rejects piece 1; it is handed out again.
        a.release(1, 2);
        assert_eq!(a.missing().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(a.next_request(1), Some(1));
        assert_eq!(a.next_request(1), Some(2));
        assert_eq!(a.next_request(1), None);
        assert_eq!(a.requested_from(1).count(), 3);

        let t = total as u64;
        let chunk =
            |i: usize| &bytes[i * METADATA_PIECE_LEN..((i + 1) * METADATA_PIECE_LEN).min(total)];
        assert_eq!(a.receive(1, 2, t, chunk(2)), Ok(Received::Stored));
        assert_eq!(a.receive(1, 2, t, chunk(2)), Ok(Received::Duplicate));
        assert_eq!(a.receive(1, 0, t, chunk(0)), Ok(Received::Stored));
        assert_eq!(a.pieces_received(), 2);
        assert_eq!(
            a.receive(1, 1, t, chunk(1)),
            Ok(Received::Complete(bytes.clone()))
        );
        assert!(a.is_complete());
        assert_eq!(a.next_request(1), None);
        assert_eq!(a.receive(1, 1, t, chunk(1)), Ok(Received::Duplicate));
    }

    #[test]
    fn checks_piece_size_index_and_total() {
        let (_, hash) = info(METADATA_PIECE_LEN + 10);
        let t = (METADATA_PIECE_LEN + 10) as u64;
        let mut a = MetadataAssembler::new(hash, t, DEFAULT_MAX_METADATA_SIZE).unwrap();
        assert_eq!(
            a.receive(1, 0, t, &[0; 10]),
            Err(MetadataError::WrongPieceSize {
                piece: 0,
                len: 10,
                expected: METADATA_PIECE_LEN
            })
        );
        assert_eq!(
            a.receive(1, 1, t, &[0; 11]),
            Err(MetadataError::WrongPieceSize {
                piece: 1,
                len: 11,
                expected: 10
            })
        );
        assert!(matches!(
            a.receive(1, 2, t, &[0; 10]),
            Err(MetadataError::PieceOutOfRange {
                piece: 2,
                num_pieces: 2
            })
        ));
        assert!(matches!(
            a.receive(1, u32::MAX, t, &[0; 10]),
            Err(MetadataError::PieceOutOfRange { .. })
        ));
        assert_eq!(
            a.receive(1, 1, t + 1, &[0; 10]),
            Err(MetadataError::TotalSizeMismatch {
                got: t + 1,
                expected: t
            })
        );
    }

    #[test]
    fn size_bounds() {
        let h = Id::ZERO;
        assert!(matches!(
            MetadataAssembler::new(h, 0, DEFAULT_MAX_METADATA_SIZE),
            Err(MetadataError::BadSize { .. })
        ));
        assert!(matches!(
            MetadataAssembler::new(h, DEFAULT_MAX_METADATA_SIZE + 1, DEFAULT_MAX_METADATA_SIZE),
            Err(MetadataError::BadSize { .. })
        ));
        assert!(matches!(
            MetadataAssembler::new(h, u64::MAX, u64::MAX),
            Err(MetadataError::BadSize { .. })
        ));
        let a = MetadataAssembler::new(h, DEFAULT_MAX_METADATA_SIZE, DEFAULT_MAX_METADATA_SIZE)
            .unwrap();
        assert_eq!(a.num_pieces(), 1024);
        let one = MetadataAssembler::new(h, 1, DEFAULT_MAX_METADATA_SIZE).unwrap();
        assert_eq!(one.piece_len(0), Some(1));
    }

    #[test]
    fn hash_mismatch_names_peers_and_resets() {
        let total = METADATA_PIECE_LEN + 5;
        let (bytes, hash) = info(total);
        let t = total as u64;
        let mut a = MetadataAssembler::new(hash, t, DEFAULT_MAX_METADATA_SIZE).unwrap();
        assert_eq!(
            a.receive(9, 0, t, &bytes[..METADATA_PIECE_LEN]),
            Ok(Received::Stored)
        );
        assert_eq!(
            a.receive(4, 1, t, &[0xEE; 5]),
            Err(MetadataError::HashMismatch { peers: vec![4, 9] })
        );
        assert_eq!(a.pieces_received(), 0);
        assert_eq!(a.missing().count(), 2);
        // A retry with good data succeeds.
        assert_eq!(
            a.receive(9, 0, t, &bytes[..METADATA_PIECE_LEN]),
            Ok(Received::Stored)
        );
        assert_eq!(
            a.receive(9, 1, t, &bytes[METADATA_PIECE_LEN..]),
            Ok(Received::Complete(bytes.clone()))
        );
    }

    #[test]
    fn release_peer_returns_its_requests() {
        let mut a =
            MetadataAssembler::new(Id::ZERO, 3 * METADATA_PIECE_LEN as u64, 1 << 24).unwrap();
        assert_eq!(a.next_request(1), Some(0));
        assert_eq!(a.next_request(2), Some(1));
        assert!(a.mark_requested(2, 1));
        assert!(!a.mark_requested(3, 1));
        a.release(1, 1); // not requested from peer 1: no change
        assert_eq!(a.missing().count(), 0);
        a.release_peer(1);
        assert_eq!(a.missing().collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(a.requested_from(2).collect::<Vec<_>>(), vec![1]);
    }

    proptest::proptest! {
        #[test]
        fn random_payloads_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = MetadataMessage::decode(&bytes);
            let mut d = b"d8:msg_typei1e5:piecei0e10:total_size".to_vec();
            d.extend_from_slice(&bytes);
            let _ = MetadataMessage::decode(&d);
        }

        #[test]
        fn data_round_trips(piece in 0u32..1000, total in 1u64..(1 << 24), len in 0usize..=METADATA_PIECE_LEN) {
            let m = MetadataMessage::Data { piece, total_size: total, data: vec![0xAB; len] };
            proptest::prop_assert_eq!(MetadataMessage::decode(&enc(&m)), Ok(m));
        }
    }
}
