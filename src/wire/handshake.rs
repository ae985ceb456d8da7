//! The BEP 3 handshake: the first 68 bytes each side sends on a peer connection.
//!
//! Layout: `19` · `"BitTorrent protocol"` · 8 reserved bytes · 20-byte info-hash · 20-byte
//! peer id. The reserved bytes advertise optional protocol features; we care about the
//! extension protocol (BEP 10, bit 0x10 of byte 5), the DHT (BEP 5, bit 0x01 of byte 7), the
//! fast extension (BEP 6, bit 0x04 of byte 7) and the offer to upgrade a hybrid torrent's
//! connection to v2 (BEP 52, bit 0x10 of byte 7).

use thiserror::Error;

use crate::id::Id;

/// The protocol string every BitTorrent handshake starts with (after its length byte).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";

/// Total length of a handshake on the wire.
pub const HANDSHAKE_LEN: usize = 1 + 19 + 8 + 20 + 20;

/// Why a handshake was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The peer does not speak the BitTorrent protocol (wrong length byte or protocol string).
    #[error("bad protocol string in handshake")]
    BadProtocol,
}

/// The 8 reserved handshake bytes, kept raw so unknown feature bits survive a round trip.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Reserved(pub [u8; 8]);

impl Reserved {
    /// Byte/bit of the extension protocol flag (BEP 10).
    const EXTENSION: (usize, u8) = (5, 0x10);
    /// Byte/bit of the DHT flag (BEP 5).
    const DHT: (usize, u8) = (7, 0x01);
    /// Byte/bit of the fast extension flag (BEP 6).
    const FAST: (usize, u8) = (7, 0x04);
    /// Byte/bit of the v2 flag (BEP 52).
    const V2: (usize, u8) = (7, 0x10);

    /// What we advertise: extension protocol (BEP 10), DHT (BEP 5) and the fast extension
    /// (BEP 6: the engine answers `have all`, `have none`, `reject`, `allowed fast`).
    pub fn ours() -> Reserved {
        let mut r = Reserved::default();
        r.set(Self::EXTENSION, true);
        r.set(Self::DHT, true);
        r.set(Self::FAST, true);
        r
    }

    fn get(&self, (byte, mask): (usize, u8)) -> bool {
        self.0.get(byte).is_some_and(|b| b & mask != 0)
    }

    fn set(&mut self, (byte, mask): (usize, u8), on: bool) {
        if let Some(b) = self.0.get_mut(byte) {
            if on {
                *b |= mask;
            } else {
                *b &= !mask;
            }
        }
    }

    /// Whether the peer supports the extension protocol (BEP 10), needed for `ut_metadata`.
    pub fn extension_protocol(&self) -> bool {
        self.get(Self::EXTENSION)
    }

    /// Whether the peer runs a DHT node (BEP 5) and will send a PORT message.
    pub fn dht(&self) -> bool {
        self.get(Self::DHT)
    }

    /// Whether the peer supports the fast extension (BEP 6). Its messages (`suggest`,
    /// `have all`/`have none`, `reject`, `allowed fast`) are only legal when both sides set it.
    pub fn fast(&self) -> bool {
        self.get(Self::FAST)
    }

    /// Whether the peer speaks v2 (BEP 52). Naming a hybrid torrent by its v1 info-hash with
    /// this bit set (libtorrent 2 does) offers to upgrade the connection: the answer may name
    /// the truncated v2 info-hash instead. We never set it (no v2 hash messages here).
    pub fn v2(&self) -> bool {
        self.get(Self::V2)
    }

    /// Sets or clears the extension protocol bit.
    pub fn set_extension_protocol(&mut self, on: bool) {
        self.set(Self::EXTENSION, on);
    }

    /// Sets or clears the DHT bit.
    pub fn set_dht(&mut self, on: bool) {
        self.set(Self::DHT, on);
    }

    /// Sets or clears the fast-extension bit (BEP 6), so the engine can advertise the fast
    /// extension once it handles the messages (see [`Reserved::ours`]).
    pub fn set_fast(&mut self, on: bool) {
        self.set(Self::FAST, on);
    }

    /// Sets or clears the v2 bit (BEP 52; see [`Reserved::v2`]).
    pub fn set_v2(&mut self, on: bool) {
        self.set(Self::V2, on);
    }
}

/// A decoded or to-be-sent handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Handshake {
    /// Feature bits.
    pub reserved: Reserved,
    /// The torrent this connection is about.
    pub info_hash: Id,
    /// The sender's peer id.
    pub peer_id: Id,
}

impl Handshake {
    /// Our handshake for `info_hash`, advertising extension protocol and DHT support.
    pub fn new(info_hash: Id, peer_id: Id) -> Handshake {
        Handshake {
            reserved: Reserved::ours(),
            info_hash,
            peer_id,
        }
    }

    /// Appends the 68-byte encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(HANDSHAKE_LEN);
        out.push(19);
        out.extend_from_slice(PROTOCOL);
        out.extend_from_slice(&self.reserved.0);
        out.extend_from_slice(&self.info_hash.0);
        out.extend_from_slice(&self.peer_id.0);
    }

    /// The 68-byte encoding as an array (convenient for a single socket write).
    pub fn to_bytes(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        let mut v = Vec::with_capacity(HANDSHAKE_LEN);
        self.encode(&mut v);
        out.copy_from_slice(&v);
        out
    }

    /// Decodes a handshake from the start of `buf`.
    ///
    /// Returns `Ok(None)` while fewer than 68 bytes are available, but fails with
    /// [`HandshakeError::BadProtocol`] as soon as the bytes received so far cannot be a
    /// BitTorrent handshake, so a non-BitTorrent peer is dropped without waiting. On success
    /// the handshake always consumed exactly [`HANDSHAKE_LEN`] bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<Handshake>, HandshakeError> {
        Self::check_prefix(buf)?;
        let Some(bytes) = buf.get(..HANDSHAKE_LEN) else {
            return Ok(None);
        };
        let field = |range: std::ops::Range<usize>| bytes.get(range).and_then(Id::from_slice);
        let reserved = bytes
            .get(20..28)
            .and_then(|r| <[u8; 8]>::try_from(r).ok())
            .map(Reserved);
        match (reserved, field(28..48), field(48..68)) {
            (Some(reserved), Some(info_hash), Some(peer_id)) => Ok(Some(Handshake {
                reserved,
                info_hash,
                peer_id,
            })),
            // Unreachable given the length check above; never panic regardless.
            _ => Ok(None),
        }
    }

    /// Decodes only the first 48 bytes (length byte, protocol, reserved, info-hash).
    ///
    /// An accepting side needs the info-hash to pick the torrent (and answer with its own
    /// handshake) before the peer id arrives; some clients wait for our reply before sending
    /// their peer id. Returns `Ok(None)` while fewer than 48 bytes are available.
    pub fn decode_prefix(buf: &[u8]) -> Result<Option<(Reserved, Id)>, HandshakeError> {
        Self::check_prefix(buf)?;
        let reserved = buf.get(20..28).and_then(|r| <[u8; 8]>::try_from(r).ok());
        let info_hash = buf.get(28..48).and_then(Id::from_slice);
        Ok(reserved.zip(info_hash).map(|(r, h)| (Reserved(r), h)))
    }

    /// Checks whatever part of the length byte + protocol string has arrived.
    fn check_prefix(buf: &[u8]) -> Result<(), HandshakeError> {
        let mut expected = [0u8; 20];
        expected[0] = 19;
        expected[1..].copy_from_slice(PROTOCOL);
        let n = buf.len().min(expected.len());
        if buf.get(..n) != expected.get(..n) {
            return Err(HandshakeError::BadProtocol);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Handshake {
        Handshake::new(Id([0xAB; 20]), Id(*b"-DN0100-abcdefghijkl"))
    }

    #[test]
    fn round_trip_and_flags() {
        let hs = sample();
        let bytes = hs.to_bytes();
        assert_eq!(bytes.len(), HANDSHAKE_LEN);
        assert_eq!(bytes[25], 0x10);
        assert_eq!(bytes[27], 0x05);
        let back = Handshake::decode(&bytes).unwrap().unwrap();
        assert_eq!(back, hs);
        assert!(back.reserved.extension_protocol());
        assert!(back.reserved.dht());
        assert!(back.reserved.fast());
    }

    #[test]
    fn flags_can_be_cleared_and_unknown_bits_survive() {
        let mut r = Reserved([0xFF; 8]);
        r.set_dht(false);
        r.set_extension_protocol(false);
        assert!(!r.dht() && !r.extension_protocol());
        assert!(r.fast());
        r.set_fast(false);
        assert!(!r.fast());
        assert_eq!(
            r.0[7], 0b1111_1010,
            "only the fast and DHT bits of byte 7 cleared"
        );
        let hs = Handshake {
            reserved: r,
            ..sample()
        };
        assert_eq!(Handshake::decode(&hs.to_bytes()).unwrap().unwrap(), hs);
    }

    #[test]
    fn fast_bit_is_byte_7_mask_4() {
        let mut r = Reserved::ours();
        assert!(r.fast(), "ours() advertises the fast extension");
        assert!(r.dht() && r.extension_protocol());
        assert_eq!(r.0, [0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        r.set_fast(false);
        assert_eq!(r.0, [0, 0, 0, 0, 0, 0x10, 0, 0x01]);
        r.set_fast(true);
        assert_eq!(r, Reserved::ours());
    }

    #[test]
    fn v2_bit_is_byte_7_mask_0x10_and_not_ours() {
        let mut r = Reserved::ours();
        assert!(
            !r.v2(),
            "we speak no v2 hash messages, so never offer the upgrade"
        );
        r.set_v2(true);
        assert!(r.v2());
        // What libtorrent 2.0.8 sends when it names a hybrid by its v1 hash.
        assert_eq!(r.0, [0, 0, 0, 0, 0, 0x10, 0, 0x15]);
        r.set_v2(false);
        assert_eq!(r, Reserved::ours());
    }

    #[test]
    fn truncated_needs_more() {
        let bytes = sample().to_bytes();
        for n in 0..HANDSHAKE_LEN {
            assert_eq!(Handshake::decode(&bytes[..n]), Ok(None), "len {n}");
        }
        // Trailing bytes (the peer's first message) are left alone.
        let mut more = bytes.to_vec();
        more.extend_from_slice(&[0, 0, 0, 0]);
        assert!(Handshake::decode(&more).unwrap().is_some());
    }

    #[test]
    fn prefix_decode() {
        let bytes = sample().to_bytes();
        assert_eq!(Handshake::decode_prefix(&bytes[..47]), Ok(None));
        let (r, h) = Handshake::decode_prefix(&bytes[..48]).unwrap().unwrap();
        assert!(r.dht());
        assert_eq!(h, Id([0xAB; 20]));
    }

    #[test]
    fn bad_protocol_rejected_early() {
        let mut bytes = sample().to_bytes();
        bytes[0] = 18;
        assert_eq!(
            Handshake::decode(&bytes[..1]),
            Err(HandshakeError::BadProtocol)
        );
        let mut bytes = sample().to_bytes();
        bytes[5] = b'x';
        assert_eq!(
            Handshake::decode(&bytes[..6]),
            Err(HandshakeError::BadProtocol)
        );
        assert_eq!(Handshake::decode(&bytes), Err(HandshakeError::BadProtocol));
        assert_eq!(
            Handshake::decode(b"GET / HTTP/1.1\r\n"),
            Err(HandshakeError::BadProtocol)
        );
    }
}
