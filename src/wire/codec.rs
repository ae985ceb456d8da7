//! Framing for peer-wire messages: `<u32 big-endian length><id><payload>`.
//!
//! [`decode`] works on whatever bytes the caller has buffered so far. It looks at the length
//! prefix and id *first* and rejects a frame whose declared length is wrong or too large for
//! its type before the caller buffers a single payload byte, so a hostile peer cannot make us
//! allocate more than the limits in [`Limits`]. [`frame_len`] exposes that check alone, so a
//! driver can reserve exactly the bytes a validated frame needs.
//!
//! The BEP 6 fast-extension messages (ids 0x0D–0x11) are decoded like the core ones: exact
//! lengths, piece indices checked against the known piece count, and `reject` checked like the
//! `request` it echoes. Whether a peer was *allowed* to send them (both sides set the fast bit)
//! is the connection's business, not the codec's.
//!
//! Unknown message ids are *skipped, bounded*: they decode to [`Message::Unknown`] if their
//! length is within [`Limits::max_unknown_len`] (and are an error otherwise), so peers using
//! extensions we do not implement (e.g. BEP 52 hash requests) are not disconnected.

use thiserror::Error;

use super::message::{ids, BlockRequest, Message, Piece, BLOCK_LEN};

/// Per-connection bounds applied while decoding. Exists so limits are explicit, configurable,
/// and can tighten once the torrent's piece count becomes known (after `ut_metadata`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest block we accept in `request`/`cancel` lengths and `piece` payloads.
    pub max_block_len: u32,
    /// Number of pieces in the torrent, once known. Enables the exact bitfield length check,
    /// the spare-bits check and piece index range checks.
    pub num_pieces: Option<u32>,
    /// Largest bitfield payload accepted while the piece count is unknown.
    pub max_bitfield_len: u32,
    /// Largest Extended payload (after the extension id byte).
    pub max_extended_len: u32,
    /// Largest payload of a message with an id we do not implement.
    pub max_unknown_len: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_block_len: BLOCK_LEN,
            num_pieces: None,
            // A 16 MiB info dict lists at most ~840k piece hashes: ~105 KB of bitfield.
            max_bitfield_len: 128 * 1024,
            max_extended_len: 1024 * 1024,
            max_unknown_len: 128 * 1024,
        }
    }
}

impl Limits {
    /// Default limits for a torrent whose piece count is known.
    pub fn with_pieces(num_pieces: u32) -> Limits {
        Limits {
            num_pieces: Some(num_pieces),
            ..Limits::default()
        }
    }

    /// The largest length prefix any message type may carry under these limits; used to
    /// reject a frame before its id byte has even arrived.
    pub fn max_frame_body(&self) -> u64 {
        let bitfield = match self.num_pieces {
            Some(n) => bitfield_len(n),
            None => u64::from(self.max_bitfield_len),
        };
        [
            13,
            1 + bitfield,
            9 + u64::from(self.max_block_len),
            2 + u64::from(self.max_extended_len),
            1 + u64::from(self.max_unknown_len),
        ]
        .into_iter()
        .max()
        .unwrap_or(13)
    }
}

/// Byte length of a bitfield covering `num_pieces` pieces.
fn bitfield_len(num_pieces: u32) -> u64 {
    u64::from(num_pieces).div_ceil(8)
}

/// Why a frame was rejected. Every variant is a protocol violation by the peer; the usual
/// reaction is to drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WireError {
    /// The length prefix exceeds the limit for this message type (or for any type, when the
    /// id byte has not arrived yet). Detected before the payload is buffered.
    #[error("frame too large: id {id:?}, length {len}, max {max}")]
    FrameTooLarge {
        /// Message id, if it had arrived.
        id: Option<u8>,
        /// Declared length (id + payload).
        len: u32,
        /// The limit that applied.
        max: u64,
    },
    /// A message whose size is fixed (or has a minimum) declared another length.
    #[error("bad length {len} for message id {id}")]
    BadLength {
        /// Message id.
        id: u8,
        /// Declared length (id + payload).
        len: u32,
    },
    /// The bitfield is not exactly `ceil(num_pieces / 8)` bytes.
    #[error("bitfield of {len} bytes, expected {expected}")]
    BitfieldLength {
        /// Received payload length.
        len: u64,
        /// Expected payload length.
        expected: u64,
    },
    /// Bits beyond the last piece are set in the bitfield.
    #[error("bitfield has spare bits set")]
    BitfieldSpareBits,
    /// A request/cancel/reject names zero bytes or more than the block limit.
    #[error("bad block length {length} (max {max})")]
    BadBlockLength {
        /// Requested length.
        length: u32,
        /// The limit.
        max: u32,
    },
    /// `begin + length` does not fit in 32 bits.
    #[error("block at {begin} of length {length} overflows")]
    BlockOverflow {
        /// Offset within the piece.
        begin: u32,
        /// Block length.
        length: u64,
    },
    /// A piece index at or beyond the torrent's piece count.
    #[error("piece index {index} out of range ({num_pieces} pieces)")]
    PieceIndexOutOfRange {
        /// The index received.
        index: u32,
        /// The torrent's piece count.
        num_pieces: u32,
    },
}

/// Reads a big-endian u32 at `at`, if the bytes are there.
fn be_u32(buf: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    let bytes: [u8; 4] = buf.get(at..end)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

/// Validates the frame header at the start of `buf` and returns the frame's total size
/// (length prefix included), or `Ok(None)` if the header itself is not complete yet.
///
/// Fails as soon as the declared length is impossible for the message id — or larger than any
/// message may be, when only the prefix has arrived — so callers never buffer oversized frames.
pub fn frame_len(buf: &[u8], limits: &Limits) -> Result<Option<usize>, WireError> {
    let Some(len) = be_u32(buf, 0) else {
        return Ok(None);
    };
    if len == 0 {
        return Ok(Some(4));
    }
    let Some(&id) = buf.get(4) else {
        let max = limits.max_frame_body();
        if u64::from(len) > max {
            return Err(WireError::FrameTooLarge { id: None, len, max });
        }
        return Ok(None);
    };
    check_len(id, len, limits)?;
    let total = u64::from(len) + 4;
    usize::try_from(total)
        .map(Some)
        .map_err(|_| WireError::FrameTooLarge {
            id: Some(id),
            len,
            max: usize::MAX as u64,
        })
}

/// Checks a declared body length against the rules for message `id`.
fn check_len(id: u8, len: u32, limits: &Limits) -> Result<(), WireError> {
    let len64 = u64::from(len);
    let exact = |n: u32| {
        if len == n {
            Ok(())
        } else {
            Err(WireError::BadLength { id, len })
        }
    };
    let range = |min: u64, max: u64| {
        if len64 > max {
            Err(WireError::FrameTooLarge {
                id: Some(id),
                len,
                max,
            })
        } else if len64 < min {
            Err(WireError::BadLength { id, len })
        } else {
            Ok(())
        }
    };
    match id {
        ids::CHOKE
        | ids::UNCHOKE
        | ids::INTERESTED
        | ids::NOT_INTERESTED
        | ids::HAVE_ALL
        | ids::HAVE_NONE => exact(1),
        ids::HAVE | ids::SUGGEST | ids::ALLOWED_FAST => exact(5),
        ids::REQUEST | ids::CANCEL | ids::REJECT => exact(13),
        ids::PORT => exact(3),
        ids::BITFIELD => match limits.num_pieces {
            Some(n) => {
                let expected = bitfield_len(n);
                if len64 - 1 != expected {
                    Err(WireError::BitfieldLength {
                        len: len64 - 1,
                        expected,
                    })
                } else {
                    Ok(())
                }
            }
            None => range(1, 1 + u64::from(limits.max_bitfield_len)),
        },
        // Piece data must be non-empty: requests are for at least one byte.
        ids::PIECE => range(10, 9 + u64::from(limits.max_block_len)),
        ids::EXTENDED => range(2, 2 + u64::from(limits.max_extended_len)),
        _ => range(1, 1 + u64::from(limits.max_unknown_len)),
    }
}

/// Checks a piece index against the known piece count.
fn check_index(index: u32, limits: &Limits) -> Result<(), WireError> {
    match limits.num_pieces {
        Some(num_pieces) if index >= num_pieces => {
            Err(WireError::PieceIndexOutOfRange { index, num_pieces })
        }
        _ => Ok(()),
    }
}

/// Checks `begin + length` fits in a u32 (a piece cannot be larger).
fn check_span(begin: u32, length: u64) -> Result<(), WireError> {
    let end = u64::from(begin).checked_add(length);
    if end.is_none_or(|end| end > u64::from(u32::MAX)) {
        return Err(WireError::BlockOverflow { begin, length });
    }
    Ok(())
}

/// Decodes one message from the start of `buf`.
///
/// Returns `Ok(Some((message, consumed)))` when a whole frame is available (the caller drains
/// `consumed` bytes), `Ok(None)` when more bytes are needed, and an error for any protocol
/// violation — including, early, a length prefix that exceeds the limits for its type.
/// Never panics and never allocates more than the validated frame size.
pub fn decode(buf: &[u8], limits: &Limits) -> Result<Option<(Message, usize)>, WireError> {
    let Some(total) = frame_len(buf, limits)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let Some((&id, payload)) = frame.get(4..).and_then(<[u8]>::split_first) else {
        return Ok(Some((Message::KeepAlive, 4)));
    };
    // Lengths were validated by `frame_len`, so the field reads below cannot miss; should one
    // ever do, report a length error rather than panic.
    let bad = || WireError::BadLength {
        id,
        len: u32::try_from(payload.len() + 1).unwrap_or(u32::MAX),
    };
    let field = |at: usize| be_u32(payload, at).ok_or_else(bad);
    let msg = match id {
        ids::CHOKE => Message::Choke,
        ids::UNCHOKE => Message::Unchoke,
        ids::INTERESTED => Message::Interested,
        ids::NOT_INTERESTED => Message::NotInterested,
        ids::HAVE_ALL => Message::HaveAll,
        ids::HAVE_NONE => Message::HaveNone,
        ids::HAVE | ids::SUGGEST | ids::ALLOWED_FAST => {
            let index = field(0)?;
            check_index(index, limits)?;
            match id {
                ids::HAVE => Message::Have { index },
                ids::SUGGEST => Message::Suggest(index),
                _ => Message::AllowedFast(index),
            }
        }
        ids::BITFIELD => {
            if let Some(n) = limits.num_pieces {
                let spare = (8 - n % 8) % 8;
                let mask = u8::try_from((1u16 << spare) - 1).unwrap_or(0xFF);
                if payload.last().is_some_and(|last| last & mask != 0) {
                    return Err(WireError::BitfieldSpareBits);
                }
            }
            Message::Bitfield(payload.to_vec())
        }
        ids::REQUEST | ids::CANCEL | ids::REJECT => {
            // A reject echoes one of our requests, so it obeys the same bounds.
            let req = BlockRequest {
                index: field(0)?,
                begin: field(4)?,
                length: field(8)?,
            };
            if req.length == 0 || req.length > limits.max_block_len {
                return Err(WireError::BadBlockLength {
                    length: req.length,
                    max: limits.max_block_len,
                });
            }
            check_index(req.index, limits)?;
            check_span(req.begin, u64::from(req.length))?;
            match id {
                ids::REQUEST => Message::Request(req),
                ids::CANCEL => Message::Cancel(req),
                _ => Message::Reject(req),
            }
        }
        ids::PIECE => {
            let index = field(0)?;
            let begin = field(4)?;
            let data = payload.get(8..).ok_or_else(bad)?;
            check_index(index, limits)?;
            check_span(begin, data.len() as u64)?;
            Message::Piece(Piece {
                index,
                begin,
                data: data.to_vec(),
            })
        }
        ids::PORT => {
            let port: [u8; 2] = payload.try_into().map_err(|_| bad())?;
            Message::Port(u16::from_be_bytes(port))
        }
        ids::EXTENDED => {
            let (&ext_id, rest) = payload.split_first().ok_or_else(bad)?;
            Message::Extended {
                ext_id,
                payload: rest.to_vec(),
            }
        }
        _ => Message::Unknown {
            id,
            payload: payload.to_vec(),
        },
    };
    Ok(Some((msg, total)))
}

/// Writes a length prefix for a body of `body_len` bytes.
///
/// Our own messages never approach 4 GiB; should one, the prefix saturates (the peer will
/// reject the frame) instead of panicking.
fn put_len(body_len: usize, out: &mut Vec<u8>) {
    debug_assert!(
        u32::try_from(body_len).is_ok(),
        "message too large to frame"
    );
    let len = u32::try_from(body_len).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
}

/// Appends the encoding of `msg` to `out`.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    out.reserve(msg.encoded_len());
    put_len(msg.body_len(), out);
    let Some(id) = msg.id() else {
        return; // keep-alive: the zero length is the whole message
    };
    match msg {
        Message::Piece(p) => {
            // Header already partly written; reuse the piece path without the prefix.
            out.push(id);
            out.extend_from_slice(&p.index.to_be_bytes());
            out.extend_from_slice(&p.begin.to_be_bytes());
            out.extend_from_slice(&p.data);
            return;
        }
        Message::Extended { ext_id, payload } => {
            out.push(id);
            out.push(*ext_id);
            out.extend_from_slice(payload);
            return;
        }
        _ => {}
    }
    out.push(id);
    match msg {
        Message::Have { index } | Message::Suggest(index) | Message::AllowedFast(index) => {
            out.extend_from_slice(&index.to_be_bytes())
        }
        Message::Bitfield(b) => out.extend_from_slice(b),
        Message::Request(r) | Message::Cancel(r) | Message::Reject(r) => {
            out.extend_from_slice(&r.index.to_be_bytes());
            out.extend_from_slice(&r.begin.to_be_bytes());
            out.extend_from_slice(&r.length.to_be_bytes());
        }
        Message::Port(port) => out.extend_from_slice(&port.to_be_bytes()),
        Message::Unknown { payload, .. } => out.extend_from_slice(payload),
        _ => {}
    }
}

/// Appends the 13-byte header of a `piece` message carrying `data_len` bytes.
///
/// Lets a sender write header and block straight from storage (e.g. a vectored write of the
/// header followed by the block buffer) without building a [`Piece`] and copying the data.
pub fn encode_piece_header(index: u32, begin: u32, data_len: u32, out: &mut Vec<u8>) {
    put_len(9usize.saturating_add(data_len as usize), out);
    out.push(ids::PIECE);
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(&begin.to_be_bytes());
}

/// Appends the 6-byte header of an Extended message whose payload is `payload_len` bytes.
///
/// Used to send `ut_metadata` data (bencoded dict + raw piece) without concatenating first.
pub fn encode_extended_header(ext_id: u8, payload_len: usize, out: &mut Vec<u8>) {
    put_len(payload_len.saturating_add(2), out);
    out.push(ids::EXTENDED);
    out.push(ext_id);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(m: &Message) -> Vec<u8> {
        let mut v = Vec::new();
        encode(m, &mut v);
        v
    }

    fn round_trip(m: Message, limits: &Limits) {
        let bytes = enc(&m);
        assert_eq!(bytes.len(), m.encoded_len());
        let (back, used) = decode(&bytes, limits).unwrap().unwrap();
        assert_eq!(back, m);
        assert_eq!(used, bytes.len());
        // Every strict prefix needs more bytes.
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n], limits), Ok(None), "{m:?} prefix {n}");
        }
    }

    fn all_messages() -> Vec<Message> {
        let req = BlockRequest {
            index: 3,
            begin: 16384,
            length: 16384,
        };
        vec![
            Message::KeepAlive,
            Message::Choke,
            Message::Unchoke,
            Message::Interested,
            Message::NotInterested,
            Message::Have { index: 7 },
            Message::Bitfield(vec![0b1010_0000, 0xFF]),
            Message::Request(req),
            Message::Cancel(req),
            Message::Piece(Piece {
                index: 3,
                begin: 0,
                data: vec![0x5A; 16384],
            }),
            Message::Port(6881),
            Message::Extended {
                ext_id: 0,
                payload: b"d1:md11:ut_metadatai1eee".to_vec(),
            },
            Message::Extended {
                ext_id: 3,
                payload: vec![],
            },
            Message::Suggest(3),
            Message::HaveAll,
            Message::HaveNone,
            Message::Reject(req),
            Message::AllowedFast(15),
            Message::Unknown {
                id: 0x15,
                payload: vec![],
            },
            Message::Unknown {
                id: 0xFF,
                payload: vec![0, 0, 0, 1],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in all_messages() {
            round_trip(m, &Limits::default());
        }
        // With a known piece count (16 pieces → 2-byte bitfield, no spare bits).
        for m in all_messages() {
            round_trip(m, &Limits::with_pieces(16));
        }
    }

    #[test]
    fn wire_format_examples() {
        assert_eq!(enc(&Message::KeepAlive), [0, 0, 0, 0]);
        assert_eq!(enc(&Message::Interested), [0, 0, 0, 1, 2]);
        assert_eq!(
            enc(&Message::Have { index: 258 }),
            [0, 0, 0, 5, 4, 0, 0, 1, 2]
        );
        assert_eq!(enc(&Message::Port(0x1AE1)), [0, 0, 0, 3, 9, 0x1A, 0xE1]);
        // BEP 6 layouts: <len=0x0005><op=0x0D><index>, <len=0x0001><op=0x0E>, ...
        assert_eq!(enc(&Message::Suggest(258)), [0, 0, 0, 5, 0x0D, 0, 0, 1, 2]);
        assert_eq!(enc(&Message::HaveAll), [0, 0, 0, 1, 0x0E]);
        assert_eq!(enc(&Message::HaveNone), [0, 0, 0, 1, 0x0F]);
        assert_eq!(
            enc(&Message::Reject(BlockRequest {
                index: 1,
                begin: 2,
                length: 3
            })),
            [0, 0, 0, 13, 0x10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]
        );
        assert_eq!(
            enc(&Message::AllowedFast(7)),
            [0, 0, 0, 5, 0x11, 0, 0, 0, 7]
        );
    }

    #[test]
    fn fast_ids_are_never_unknown() {
        // Every id BEP 6 defines decodes to its own variant, under either kind of limits.
        for limits in [Limits::default(), Limits::with_pieces(16)] {
            for (bytes, want) in [
                (header(5, Some(0x0D)), Message::Suggest(0)),
                (header(1, Some(0x0E)), Message::HaveAll),
                (header(1, Some(0x0F)), Message::HaveNone),
                (enc(&Message::AllowedFast(9)), Message::AllowedFast(9)),
            ] {
                let mut bytes = bytes;
                bytes.resize(frame_len(&bytes, &limits).unwrap().unwrap(), 0);
                assert_eq!(decode(&bytes, &limits).unwrap().unwrap().0, want);
            }
        }
    }

    #[test]
    fn stream_of_messages() {
        let mut buf = Vec::new();
        let msgs = all_messages();
        for m in &msgs {
            encode(m, &mut buf);
        }
        let mut pos = 0;
        let mut out = Vec::new();
        while let Some((m, used)) = decode(&buf[pos..], &Limits::default()).unwrap() {
            out.push(m);
            pos += used;
        }
        assert_eq!(pos, buf.len());
        assert_eq!(out, msgs);
    }

    #[test]
    fn piece_header_matches_encode() {
        let data = vec![9u8; 100];
        let mut split = Vec::new();
        encode_piece_header(1, 2, 100, &mut split);
        assert_eq!(split.len(), 13);
        split.extend_from_slice(&data);
        let whole = enc(&Message::Piece(Piece {
            index: 1,
            begin: 2,
            data,
        }));
        assert_eq!(split, whole);

        let mut ext = Vec::new();
        encode_extended_header(4, 3, &mut ext);
        ext.extend_from_slice(b"abc");
        assert_eq!(
            ext,
            enc(&Message::Extended {
                ext_id: 4,
                payload: b"abc".to_vec()
            })
        );
    }

    /// Just a header declaring `len` for `id`: nothing else is buffered.
    fn header(len: u32, id: Option<u8>) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.extend(id);
        v
    }

    #[test]
    fn oversized_prefix_rejected_before_payload() {
        let l = Limits::default();
        // Before the id byte arrives: larger than any message may be.
        assert!(matches!(
            decode(&header(u32::MAX, None), &l),
            Err(WireError::FrameTooLarge { id: None, .. })
        ));
        // Within the global max but the id says piece: over 16 KiB + 9.
        assert!(matches!(
            decode(&header(9 + 16384 + 1, Some(7)), &l),
            Err(WireError::FrameTooLarge { id: Some(7), .. })
        ));
        assert_eq!(decode(&header(9 + 16384, Some(7)), &l), Ok(None));
        // Extended over the 1 MiB cap.
        assert!(matches!(
            decode(&header(2 + 1024 * 1024 + 1, Some(20)), &l),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert_eq!(decode(&header(2 + 1024 * 1024, Some(20)), &l), Ok(None));
        // Bitfield while the piece count is unknown.
        assert!(matches!(
            decode(&header(2 + 128 * 1024, Some(5)), &l),
            Err(WireError::FrameTooLarge { .. })
        ));
        // Unknown ids.
        assert!(matches!(
            decode(&header(2 + 128 * 1024, Some(99)), &l),
            Err(WireError::FrameTooLarge { .. })
        ));
        assert_eq!(decode(&header(1 + 128 * 1024, Some(99)), &l), Ok(None));
        // frame_len tells the driver exactly what to buffer.
        assert_eq!(frame_len(&header(13, Some(6)), &l), Ok(Some(17)));
        assert_eq!(frame_len(&header(13, None), &l), Ok(None));
        assert_eq!(frame_len(&[0, 0], &l), Ok(None));
    }

    #[test]
    fn fixed_sizes_enforced() {
        let l = Limits::default();
        for (id, good) in [
            (0u8, 1u32),
            (1, 1),
            (2, 1),
            (3, 1),
            (4, 5),
            (6, 13),
            (8, 13),
            (9, 3),
            (0x0D, 5),
            (0x0E, 1),
            (0x0F, 1),
            (0x10, 13),
            (0x11, 5),
        ] {
            for len in [good - 1, good + 1, 1000] {
                if len == 0 {
                    continue;
                }
                assert_eq!(
                    decode(&header(len, Some(id)), &l),
                    Err(WireError::BadLength { id, len }),
                    "id {id} len {len}"
                );
            }
        }
        // Minimum sizes.
        assert_eq!(
            decode(&header(9, Some(7)), &l),
            Err(WireError::BadLength { id: 7, len: 9 })
        );
        assert_eq!(
            decode(&header(1, Some(20)), &l),
            Err(WireError::BadLength { id: 20, len: 1 })
        );
        // An empty bitfield is accepted while the piece count is unknown (harmless).
        assert_eq!(
            decode(&header(1, Some(5)), &l),
            Ok(Some((Message::Bitfield(vec![]), 5)))
        );
    }

    #[test]
    fn bitfield_bounds() {
        let l = Limits::with_pieces(10); // 2 bytes, 6 spare bits
        assert_eq!(
            decode(&header(4, Some(5)), &l),
            Err(WireError::BitfieldLength {
                len: 3,
                expected: 2
            })
        );
        assert_eq!(
            decode(&header(2, Some(5)), &l),
            Err(WireError::BitfieldLength {
                len: 1,
                expected: 2
            })
        );
        let ok = enc(&Message::Bitfield(vec![0xFF, 0b1100_0000]));
        assert!(decode(&ok, &l).unwrap().is_some());
        for spare in [0b0010_0000u8, 0b0000_0001] {
            let bad = enc(&Message::Bitfield(vec![0xFF, 0b1100_0000 | spare]));
            assert_eq!(decode(&bad, &l), Err(WireError::BitfieldSpareBits));
        }
        // Exactly 8 pieces: no spare bits to check.
        let l8 = Limits::with_pieces(8);
        assert!(decode(&enc(&Message::Bitfield(vec![0xFF])), &l8)
            .unwrap()
            .is_some());
        // Zero pieces: empty bitfield.
        let l0 = Limits::with_pieces(0);
        assert!(decode(&enc(&Message::Bitfield(vec![])), &l0)
            .unwrap()
            .is_some());
    }

    #[test]
    fn request_bounds() {
        let l = Limits::with_pieces(4);
        let req = |index, begin, length| {
            enc(&Message::Request(BlockRequest {
                index,
                begin,
                length,
            }))
        };
        assert_eq!(
            decode(&req(0, 0, 0), &l),
            Err(WireError::BadBlockLength {
                length: 0,
                max: 16384
            })
        );
        assert_eq!(
            decode(&req(0, 0, 16385), &l),
            Err(WireError::BadBlockLength {
                length: 16385,
                max: 16384
            })
        );
        assert_eq!(
            decode(&req(4, 0, 16384), &l),
            Err(WireError::PieceIndexOutOfRange {
                index: 4,
                num_pieces: 4
            })
        );
        assert!(matches!(
            decode(&req(0, u32::MAX, 1), &l),
            Err(WireError::BlockOverflow { .. })
        ));
        let cancel = enc(&Message::Cancel(BlockRequest {
            index: 0,
            begin: 0,
            length: 0,
        }));
        assert!(matches!(
            decode(&cancel, &l),
            Err(WireError::BadBlockLength { .. })
        ));
        assert!(matches!(
            decode(&enc(&Message::Have { index: 9 }), &l),
            Err(WireError::PieceIndexOutOfRange { .. })
        ));
        for m in [Message::Suggest(4), Message::AllowedFast(u32::MAX)] {
            assert!(
                matches!(
                    decode(&enc(&m), &l),
                    Err(WireError::PieceIndexOutOfRange { .. })
                ),
                "{m:?}"
            );
            // Before the piece count is known any index is accepted.
            assert!(decode(&enc(&m), &Limits::default()).unwrap().is_some());
        }
        let reject = |index, begin, length| {
            enc(&Message::Reject(BlockRequest {
                index,
                begin,
                length,
            }))
        };
        assert!(matches!(
            decode(&reject(0, 0, 0), &l),
            Err(WireError::BadBlockLength { length: 0, .. })
        ));
        assert!(matches!(
            decode(&reject(0, 0, 16385), &l),
            Err(WireError::BadBlockLength { .. })
        ));
        assert!(matches!(
            decode(&reject(4, 0, 1), &l),
            Err(WireError::PieceIndexOutOfRange { .. })
        ));
        assert!(matches!(
            decode(&reject(0, u32::MAX, 1), &l),
            Err(WireError::BlockOverflow { .. })
        ));
        let piece = enc(&Message::Piece(Piece {
            index: 5,
            begin: 0,
            data: vec![1],
        }));
        assert!(matches!(
            decode(&piece, &l),
            Err(WireError::PieceIndexOutOfRange { .. })
        ));
        let piece = enc(&Message::Piece(Piece {
            index: 0,
            begin: u32::MAX,
            data: vec![1, 2],
        }));
        assert!(matches!(
            decode(&piece, &l),
            Err(WireError::BlockOverflow { .. })
        ));
    }

    fn arb_request() -> impl Strategy<Value = BlockRequest> {
        (
            any::<u32>(),
            0u32..=(u32::MAX - BLOCK_LEN),
            1u32..=BLOCK_LEN,
        )
            .prop_map(|(index, begin, length)| BlockRequest {
                index,
                begin,
                length,
            })
    }

    /// Every id the codec decodes to a variant of its own.
    const KNOWN_IDS: [u8; 16] = [
        0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0x0D, 0x0E, 0x0F, 0x10, 0x11, 20,
    ];

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            Just(Message::KeepAlive),
            Just(Message::Choke),
            Just(Message::Unchoke),
            Just(Message::Interested),
            Just(Message::NotInterested),
            any::<u32>().prop_map(|index| Message::Have { index }),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Message::Bitfield),
            arb_request().prop_map(Message::Request),
            arb_request().prop_map(Message::Cancel),
            (
                any::<u32>(),
                0u32..(u32::MAX - BLOCK_LEN),
                proptest::collection::vec(any::<u8>(), 1..=BLOCK_LEN as usize)
            )
                .prop_map(|(index, begin, data)| Message::Piece(Piece {
                    index,
                    begin,
                    data
                })),
            any::<u16>().prop_map(Message::Port),
            any::<u32>().prop_map(Message::Suggest),
            Just(Message::HaveAll),
            Just(Message::HaveNone),
            arb_request().prop_map(Message::Reject),
            any::<u32>().prop_map(Message::AllowedFast),
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..300))
                .prop_map(|(ext_id, payload)| Message::Extended { ext_id, payload }),
            (
                any::<u8>().prop_filter("unknown id", move |id| !KNOWN_IDS.contains(id)),
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(id, payload)| Message::Unknown { id, payload }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..2048),
            pieces in proptest::option::of(0u32..5000),
        ) {
            let limits = Limits { num_pieces: pieces, ..Limits::default() };
            let mut rest = &bytes[..];
            // Decode a stream until it needs more bytes or errors.
            while let Ok(Some((_, used))) = decode(rest, &limits) {
                prop_assert!(used >= 4 && used <= rest.len());
                rest = &rest[used..];
            }
        }

        #[test]
        fn random_payload_after_valid_header_never_panics(
            id in any::<u8>(),
            body in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut bytes = u32::try_from(body.len() + 1).unwrap().to_be_bytes().to_vec();
            bytes.push(id);
            bytes.extend_from_slice(&body);
            let _ = decode(&bytes, &Limits::with_pieces(100));
            if let Ok(Some((Message::Unknown { id: got, .. }, _))) = decode(&bytes, &Limits::default()) {
                prop_assert!(!KNOWN_IDS.contains(&got), "id {} decoded as Unknown", got);
            }
        }

        #[test]
        fn encode_decode_round_trip(m in arb_message()) {
            let bytes = enc(&m);
            prop_assert_eq!(bytes.len(), m.encoded_len());
            let (back, used) = decode(&bytes, &Limits::default()).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, m);
            // A truncated frame never decodes to a message.
            let cut = bytes.len() / 2;
            prop_assert_eq!(decode(&bytes[..cut], &Limits::default()), Ok(None));
        }
    }
}
