//! Peer-wire codec: the bytes two BitTorrent peers exchange over TCP, as typed values.
//!
//! This module is *sans-IO*: it never touches a socket, a clock or a global random source.
//! Bytes go in, typed messages (or typed errors) come out, and typed messages are encoded into a
//! caller-owned `Vec<u8>`. The tokio driver in `engine` owns the sockets and buffers; this
//! module only decides what the bytes mean, so it can be unit-tested and fuzzed in isolation.
//!
//! Layout (one job per file):
//! - [`handshake`]: the fixed 68-byte BEP 3 handshake and its reserved-bit flags.
//! - [`peer_id`]: generating our Azureus-style peer id (BEP 20) and naming a peer's client.
//! - [`message`]: the typed length-prefixed messages (BEP 3, PORT from BEP 5, the fast
//!   extension from BEP 6, Extended from BEP 10).
//! - [`codec`]: framing — bounded decoding from a byte buffer, and encoding.
//! - [`fast`]: the BEP 6 allowed-fast set (pieces a choked peer may still request).
//! - [`extension`]: the BEP 10 extension-protocol handshake dictionary.
//! - [`metadata`]: BEP 9 `ut_metadata` messages and the [`MetadataAssembler`] that rebuilds and
//!   verifies an info dictionary from 16 KiB pieces.
//! - [`pex`]: BEP 11 `ut_pex` messages and the rate-limited per-connection [`PexSender`].
//! - [`bencode_scan`]: a bounded, non-recursive bencode length scanner used to find where a
//!   bencoded value ends (and to refuse pathological nesting before handing bytes to serde).
//!
//! Robustness rules followed throughout: every length read from the network is checked against
//! a limit *before* anything is buffered or allocated for it, arithmetic on network values is
//! checked, and malformed input yields a typed error — never a panic.

pub mod bencode_scan;
pub mod codec;
pub mod extension;
pub mod fast;
pub mod handshake;
pub mod message;
pub mod metadata;
pub mod peer_id;
pub mod pex;

pub use bencode_scan::{bencode_value_len, ScanError};
pub use codec::{
    decode, encode, encode_extended_header, encode_piece_header, frame_len, Limits, WireError,
};
pub use extension::{
    ExtensionError, ExtensionHandshake, DEFAULT_MAX_METADATA_SIZE, MAX_EXTENSION_DEPTH,
};
pub use fast::allowed_fast_set;
pub use handshake::{Handshake, HandshakeError, Reserved, HANDSHAKE_LEN, PROTOCOL};
pub use message::{bitfield_has, bitfield_set, BlockRequest, Message, Piece, BLOCK_LEN};
pub use metadata::{
    MetadataAssembler, MetadataError, MetadataMessage, Received, METADATA_PIECE_LEN, UT_METADATA,
};
pub use peer_id::{client_name, generate_peer_id, ClientInfo, PEER_ID_PREFIX};
pub use pex::{
    PexError, PexFlags, PexMessage, PexSender, MAX_PEX_ENTRIES, MAX_PEX_PAYLOAD, PEX_INTERVAL,
    UT_PEX,
};
