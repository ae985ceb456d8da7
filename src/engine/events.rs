//! Messages between the parts of one torrent: commands from the driver to a peer task
//! ([`Cmd`]) and events from peer tasks and hashers to the driver ([`Event`]). They live in a
//! module of their own so that peers, hashers and the driver depend on them, not on each other.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::peer_list::FailKind;
use super::picker::PeerKey;
use crate::torrent::{StorageError, VerifiedPiece};
use crate::wire::BlockRequest;

/// Commands from the driver (or another peer's task) to one peer task.
#[derive(Debug, Clone)]
pub(crate) enum Cmd {
    /// We completed a piece: send `have`.
    Have(u32),
    /// Another peer delivered this block first (endgame): send `cancel`.
    Cancel(BlockRequest),
    /// Choke (true) or unchoke (false) the peer.
    Choke(bool),
    /// The addresses of our other connected peers, for PEX (BEP 11).
    Pex(Arc<Vec<SocketAddr>>),
    /// Close the connection (banned, or we are both seeds).
    Close(&'static str),
}

/// Events from peer tasks and hashers to the driver.
#[derive(Debug)]
pub(crate) enum Event {
    /// A handshake completed.
    PeerUp {
        /// Connection id.
        key: PeerKey,
        /// Remote address of the connection (the dial address for outgoing ones).
        addr: SocketAddr,
        /// We dialed (true) or they did (false).
        outgoing: bool,
    },
    /// An incoming peer told us the port it listens on (BEP 10 `p`): its dialable address.
    ListenAddr {
        /// Connection id.
        key: PeerKey,
        /// The peer's IP with its listen port.
        addr: SocketAddr,
    },
    /// A connection ended.
    PeerDown {
        /// Connection id.
        key: PeerKey,
        /// Remote address of the connection.
        addr: SocketAddr,
        /// Why, in the peer list's terms (`None`: an ordinary close).
        fail: Option<FailKind>,
    },
    /// An outgoing connection attempt finished its connect/handshake phase.
    DialDone {
        /// Address dialed.
        addr: SocketAddr,
        /// `Ok` if a peer task now runs for it, else why it failed.
        result: Result<(), FailKind>,
    },
    /// A peer's interest in us changed (choker input).
    Interest,
    /// The verified info dictionary.
    Metadata(Vec<u8>),
    /// Every address of this IP must be banned (it sent bad data).
    Ban(IpAddr),
    /// A piece was hashed (and written, if good).
    Hashed(HashResult),
    /// A peer's DHT port (BEP 5 PORT).
    DhtPort(SocketAddr),
    /// Addresses a peer gave us through PEX.
    PexPeers(Vec<SocketAddr>),
    /// A peer's own IPv6 address with its listen port (BEP 7 `ipv6` in its BEP 10
    /// handshake over IPv4): a candidate, learnt from that peer, and another way to reach
    /// the peer of connection `key` (not dialed while that connection lasts).
    Ipv6Addr {
        /// Connection id of the peer that named the address.
        key: PeerKey,
        /// Its IPv6 address with its listen port.
        addr: SocketAddr,
    },
    /// A dial to `addr` reached a peer already connected as `key` (same peer id, e.g. over
    /// the other address family): the new connection was dropped, and `addr` counts as
    /// connected for as long as `key` is.
    Alias {
        /// Connection id of the connection kept.
        key: PeerKey,
        /// The dialed address of the dropped duplicate.
        addr: SocketAddr,
    },
}

/// Outcome of a hash job.
#[derive(Debug)]
pub(crate) enum HashOutcome {
    /// Matched and written; block hashes if asked for.
    Passed(VerifiedPiece, Option<Vec<[u8; 20]>>),
    /// Did not match; the hash of each block, for smart-ban.
    Failed(Vec<[u8; 20]>),
    /// Disk error.
    Error(StorageError),
}

/// A piece's hash result.
#[derive(Debug)]
pub(crate) struct HashResult {
    /// Piece index.
    pub piece: u32,
    /// What happened.
    pub outcome: HashOutcome,
}
