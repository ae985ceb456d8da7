//! Typed peer-wire messages: everything that follows the handshake on a connection.
//!
//! BEP 3 defines the core messages; BEP 5 adds PORT (id 9), BEP 6 (fast extension) adds
//! Suggest, Have All, Have None, Reject and Allowed Fast (ids 0x0D–0x11), and BEP 10 adds
//! Extended (id 20), which carries the extension handshake, `ut_metadata` and `ut_pex`.
//! Framing and limits live in [`super::codec`]; this file only names the messages and their
//! ids.

/// Standard block size (16 KiB): the unit of piece requests and `ut_metadata` pieces. The one
/// constant is the torrent layout's, so requests and piece geometry cannot disagree.
pub use crate::torrent::BLOCK_SIZE as BLOCK_LEN;

/// Message ids as they appear on the wire (the byte after the length prefix).
pub mod ids {
    /// `choke`: the sender will not serve our requests.
    pub const CHOKE: u8 = 0;
    /// `unchoke`: the sender will serve our requests.
    pub const UNCHOKE: u8 = 1;
    /// `interested`: the sender wants pieces we have.
    pub const INTERESTED: u8 = 2;
    /// `not interested`.
    pub const NOT_INTERESTED: u8 = 3;
    /// `have`: the sender completed a piece.
    pub const HAVE: u8 = 4;
    /// `bitfield`: the sender's pieces, only as the first message.
    pub const BITFIELD: u8 = 5;
    /// `request`: ask for a block.
    pub const REQUEST: u8 = 6;
    /// `piece`: a block of data.
    pub const PIECE: u8 = 7;
    /// `cancel`: withdraw a request.
    pub const CANCEL: u8 = 8;
    /// `port` (BEP 5): the sender's DHT UDP port.
    pub const PORT: u8 = 9;
    /// `suggest piece` (BEP 6): the sender advises downloading this piece (e.g. it is cached).
    pub const SUGGEST: u8 = 0x0D;
    /// `have all` (BEP 6): replaces the bitfield when the sender has every piece.
    pub const HAVE_ALL: u8 = 0x0E;
    /// `have none` (BEP 6): replaces the bitfield when the sender has no piece.
    pub const HAVE_NONE: u8 = 0x0F;
    /// `reject request` (BEP 6): the sender will not serve one of our requests.
    pub const REJECT: u8 = 0x10;
    /// `allowed fast` (BEP 6): we may request this piece even while choked.
    pub const ALLOWED_FAST: u8 = 0x11;
    /// `extended` (BEP 10): an extension message.
    pub const EXTENDED: u8 = 20;
}

/// A block request (also the body of `cancel`): `length` bytes at `begin` within piece `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockRequest {
    /// Piece index.
    pub index: u32,
    /// Byte offset within the piece.
    pub begin: u32,
    /// Number of bytes requested (1..=16 KiB once decoded under default limits).
    pub length: u32,
}

/// A block of piece data. The data is owned so the message can outlive the read buffer; when
/// sending, use [`super::codec::encode_piece_header`] to avoid copying the data twice.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Piece {
    /// Piece index.
    pub index: u32,
    /// Byte offset within the piece.
    pub begin: u32,
    /// The block's bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Piece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Do not dump 16 KiB of bytes into logs.
        f.debug_struct("Piece")
            .field("index", &self.index)
            .field("begin", &self.begin)
            .field("len", &self.data.len())
            .finish()
    }
}

/// One peer-wire message after the handshake.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// Zero-length message that keeps an idle connection open.
    KeepAlive,
    /// The sender stops serving our requests.
    Choke,
    /// The sender will serve our requests.
    Unchoke,
    /// The sender wants data from us.
    Interested,
    /// The sender no longer wants data from us.
    NotInterested,
    /// The sender now has piece `index`.
    Have {
        /// The completed piece.
        index: u32,
    },
    /// The sender's pieces, high bit of the first byte = piece 0. Decoded length is exactly
    /// `ceil(num_pieces / 8)` with zero spare bits when the piece count is known.
    Bitfield(Vec<u8>),
    /// Request for a block.
    Request(BlockRequest),
    /// A block of data.
    Piece(Piece),
    /// Withdraws an earlier request.
    Cancel(BlockRequest),
    /// The sender's DHT port (BEP 5): add the peer's address with this port to the routing
    /// table.
    Port(u16),
    /// BEP 6: the sender suggests we download this piece (advisory; it may be in its cache).
    /// Only valid when both sides set the fast-extension bit.
    Suggest(u32),
    /// BEP 6: the sender has every piece; sent instead of a bitfield, as the first message.
    HaveAll,
    /// BEP 6: the sender has no piece; sent instead of a bitfield, as the first message.
    HaveNone,
    /// BEP 6: the sender will not serve this request (it echoes our `request`), so the block
    /// can be asked of someone else at once instead of waiting for a timeout.
    Reject(BlockRequest),
    /// BEP 6: we may request this piece even while the sender chokes us. Not a claim that the
    /// sender has the piece.
    AllowedFast(u32),
    /// A BEP 10 extension message: `ext_id` 0 is the extension handshake, other ids are
    /// the ones *we* assigned in our handshake's `m` dictionary.
    Extended {
        /// Extension message id.
        ext_id: u8,
        /// The raw payload (bencoded, possibly followed by raw bytes for `ut_metadata`).
        payload: Vec<u8>,
    },
    /// A message id we do not implement (e.g. BEP 52 hash requests). Decoded — within
    /// [`super::codec::Limits::max_unknown_len`] — so the connection can skip it and carry
    /// on; the caller should ignore it. Never construct this with a known id.
    Unknown {
        /// The message id.
        id: u8,
        /// The raw payload.
        payload: Vec<u8>,
    },
}

impl Message {
    /// The wire id of this message, or `None` for keep-alive (which has no id byte).
    pub fn id(&self) -> Option<u8> {
        Some(match self {
            Message::KeepAlive => return None,
            Message::Choke => ids::CHOKE,
            Message::Unchoke => ids::UNCHOKE,
            Message::Interested => ids::INTERESTED,
            Message::NotInterested => ids::NOT_INTERESTED,
            Message::Have { .. } => ids::HAVE,
            Message::Bitfield(_) => ids::BITFIELD,
            Message::Request(_) => ids::REQUEST,
            Message::Piece(_) => ids::PIECE,
            Message::Cancel(_) => ids::CANCEL,
            Message::Port(_) => ids::PORT,
            Message::Suggest(_) => ids::SUGGEST,
            Message::HaveAll => ids::HAVE_ALL,
            Message::HaveNone => ids::HAVE_NONE,
            Message::Reject(_) => ids::REJECT,
            Message::AllowedFast(_) => ids::ALLOWED_FAST,
            Message::Extended { .. } => ids::EXTENDED,
            Message::Unknown { id, .. } => *id,
        })
    }

    /// Length of the message body (id byte + payload), i.e. the value of the length prefix.
    pub fn body_len(&self) -> usize {
        match self {
            Message::KeepAlive => 0,
            Message::Choke
            | Message::Unchoke
            | Message::Interested
            | Message::NotInterested
            | Message::HaveAll
            | Message::HaveNone => 1,
            Message::Have { .. } | Message::Suggest(_) | Message::AllowedFast(_) => 5,
            Message::Bitfield(b) => 1usize.saturating_add(b.len()),
            Message::Request(_) | Message::Cancel(_) | Message::Reject(_) => 13,
            Message::Piece(p) => 9usize.saturating_add(p.data.len()),
            Message::Port(_) => 3,
            Message::Extended { payload, .. } => 2usize.saturating_add(payload.len()),
            Message::Unknown { payload, .. } => 1usize.saturating_add(payload.len()),
        }
    }

    /// Total encoded length including the 4-byte length prefix.
    pub fn encoded_len(&self) -> usize {
        self.body_len().saturating_add(4)
    }
}

/// Whether piece `index` is set in a bitfield (out-of-range indices read as absent).
pub fn bitfield_has(bitfield: &[u8], index: u32) -> bool {
    let byte = usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitfield.get(i));
    byte.is_some_and(|b| b & (0x80 >> (index % 8)) != 0)
}

/// Sets piece `index` in a bitfield (no-op when out of range).
pub fn bitfield_set(bitfield: &mut [u8], index: u32) {
    if let Some(b) = usize::try_from(index / 8)
        .ok()
        .and_then(|i| bitfield.get_mut(i))
    {
        *b |= 0x80 >> (index % 8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitfield_helpers() {
        let mut bf = vec![0u8; 2];
        bitfield_set(&mut bf, 0);
        bitfield_set(&mut bf, 9);
        bitfield_set(&mut bf, 100);
        assert_eq!(bf, vec![0x80, 0x40]);
        assert!(bitfield_has(&bf, 0));
        assert!(bitfield_has(&bf, 9));
        assert!(!bitfield_has(&bf, 1));
        assert!(!bitfield_has(&bf, u32::MAX));
    }

    #[test]
    fn ids_and_lengths() {
        assert_eq!(Message::KeepAlive.id(), None);
        assert_eq!(Message::Port(1).id(), Some(9));
        assert_eq!(Message::Port(1).encoded_len(), 7);
        let req = BlockRequest {
            index: 1,
            begin: 0,
            length: 16384,
        };
        for (m, id, body) in [
            (Message::Suggest(1), 0x0D, 5),
            (Message::HaveAll, 0x0E, 1),
            (Message::HaveNone, 0x0F, 1),
            (Message::Reject(req), 0x10, 13),
            (Message::AllowedFast(1), 0x11, 5),
        ] {
            assert_eq!(m.id(), Some(id), "{m:?}");
            assert_eq!(m.body_len(), body, "{m:?}");
        }
        let p = Message::Piece(Piece {
            index: 0,
            begin: 0,
            data: vec![0; 10],
        });
        assert_eq!(p.body_len(), 19);
        assert!(format!("{p:?}").contains("len: 10"));
    }
}
