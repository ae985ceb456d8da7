//! KRPC (BEP 5): the only place where datagram bytes become typed DHT messages and back.
//!
//! Decoding goes through bt_bencode + serde into a loose "raw" shape, then is checked into the
//! typed [`Message`]; everything past this module works on types. Decoding never panics, bounds
//! nesting depth before serde recurses, and allocates at most in proportion to the datagram.

use std::fmt::Debug;
use std::hash::Hash;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes};

use crate::id::Id;

/// Size of one compact node info entry: 20-byte id, 4-byte IPv4, 2-byte port.
pub const COMPACT_NODE_LEN: usize = 26;
/// Size of one compact peer info entry: 4-byte IPv4, 2-byte port.
pub const COMPACT_PEER_LEN: usize = 6;
/// Size of one compact IPv6 node info entry (BEP 32 `nodes6`): id, 16-byte IPv6, port.
pub const COMPACT_NODE6_LEN: usize = 38;
/// Size of one compact IPv6 peer (BEP 32 `values`): 16-byte IPv6, 2-byte port.
pub const COMPACT_PEER6_LEN: usize = 18;
/// Deepest bencode nesting we accept; KRPC needs 3 (dict → list → string).
const MAX_DEPTH: usize = 8;

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::SocketAddrV4 {}
    impl Sealed for std::net::SocketAddrV6 {}
}

/// An address family the DHT runs on (BEP 5 IPv4, BEP 32 IPv6), named by its socket address
/// type. One DHT core runs per family, each with its own table, so the core is generic over
/// this trait; IPv4 keeps its 8-byte addresses (the simulator holds a million IPv4 nodes).
/// Sealed: the wire knows exactly these two.
pub trait DhtAddr:
    sealed::Sealed + Copy + Eq + Ord + Hash + Debug + Send + Sync + Unpin + 'static
{
    /// The IP address alone (what tokens, rate limits and one-node-per-IP are keyed by).
    type Ip: Copy + Eq + Ord + Hash + Debug + Send + Sync + Unpin + Into<IpAddr> + 'static;
    /// Length of the compact peer form (6 or 18).
    const COMPACT_LEN: usize;
    /// Which node list (`n4` / `n6` of BEP 32 `want`) carries this family.
    const WANT: Want;
    /// Human name for logs and status ("ipv4", "ipv6").
    const NAME: &'static str;
    /// Parses the compact peer form; `None` unless `b` is exactly `COMPACT_LEN` long.
    fn decode_compact(b: &[u8]) -> Option<Self>;
    /// Appends the compact peer form.
    fn write_compact(&self, out: &mut Vec<u8>);
    /// The IP part.
    fn ip_of(&self) -> Self::Ip;
    /// The port part.
    fn port_of(&self) -> u16;
    /// Builds an address from its parts.
    fn from_parts(ip: Self::Ip, port: u16) -> Self;
    /// The IP as a family-neutral value.
    fn ip_addr(ip: &Self::Ip) -> IpAddr;
    /// The network an IP belongs to, for "at most a few nodes per network" limits: the /24
    /// of an IPv4 address, the /64 of an IPv6 one.
    fn subnet(ip: &Self::Ip) -> u64;
    /// Family-neutral socket address (for the driver and the `ip` key).
    fn to_socket_addr(&self) -> SocketAddr;
    /// This family's address, if `a` is one (IPv4-mapped IPv6 counts as IPv4).
    fn from_socket_addr(a: SocketAddr) -> Option<Self>;
    /// The node list of this family in a response, if the responder sent the key.
    fn nodes_of(r: &Response) -> Option<&[NodeInfo<Self>]>;
    /// Sets the node list of this family in a response.
    fn set_nodes(r: &mut Response, nodes: Vec<NodeInfo<Self>>);
    /// The peers of this family in a response's `values`.
    fn values_of(r: &Response) -> &[Self];
    /// Sets the peers of this family in a response's `values`.
    fn set_values(r: &mut Response, values: Vec<Self>);
}

impl DhtAddr for SocketAddrV4 {
    type Ip = Ipv4Addr;
    const COMPACT_LEN: usize = COMPACT_PEER_LEN;
    const WANT: Want = Want::N4;
    const NAME: &'static str = "ipv4";
    fn decode_compact(b: &[u8]) -> Option<Self> {
        decode_peer(b)
    }
    fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&encode_peer(self));
    }
    fn ip_of(&self) -> Ipv4Addr {
        *self.ip()
    }
    fn port_of(&self) -> u16 {
        self.port()
    }
    fn from_parts(ip: Ipv4Addr, port: u16) -> Self {
        SocketAddrV4::new(ip, port)
    }
    fn ip_addr(ip: &Ipv4Addr) -> IpAddr {
        IpAddr::V4(*ip)
    }
    fn subnet(ip: &Ipv4Addr) -> u64 {
        u64::from(u32::from(*ip) >> 8)
    }
    fn to_socket_addr(&self) -> SocketAddr {
        SocketAddr::V4(*self)
    }
    fn from_socket_addr(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(a) => a
                .ip()
                .to_ipv4_mapped()
                .map(|ip| SocketAddrV4::new(ip, a.port())),
        }
    }
    fn nodes_of(r: &Response) -> Option<&[NodeInfo<Self>]> {
        r.nodes.as_deref()
    }
    fn set_nodes(r: &mut Response, nodes: Vec<NodeInfo<Self>>) {
        r.nodes = Some(nodes);
    }
    fn values_of(r: &Response) -> &[Self] {
        &r.values
    }
    fn set_values(r: &mut Response, values: Vec<Self>) {
        r.values = values;
    }
}

impl DhtAddr for SocketAddrV6 {
    type Ip = Ipv6Addr;
    const COMPACT_LEN: usize = COMPACT_PEER6_LEN;
    const WANT: Want = Want::N6;
    const NAME: &'static str = "ipv6";
    fn decode_compact(b: &[u8]) -> Option<Self> {
        decode_peer6(b)
    }
    fn write_compact(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&encode_peer6(self));
    }
    fn ip_of(&self) -> Ipv6Addr {
        *self.ip()
    }
    fn port_of(&self) -> u16 {
        self.port()
    }
    fn from_parts(ip: Ipv6Addr, port: u16) -> Self {
        SocketAddrV6::new(ip, port, 0, 0)
    }
    fn ip_addr(ip: &Ipv6Addr) -> IpAddr {
        IpAddr::V6(*ip)
    }
    fn subnet(ip: &Ipv6Addr) -> u64 {
        (u128::from(*ip) >> 64) as u64
    }
    fn to_socket_addr(&self) -> SocketAddr {
        SocketAddr::V6(*self)
    }
    fn from_socket_addr(a: SocketAddr) -> Option<Self> {
        match a {
            SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_none() => {
                Some(SocketAddrV6::new(*a.ip(), a.port(), 0, 0))
            }
            _ => None,
        }
    }
    fn nodes_of(r: &Response) -> Option<&[NodeInfo<Self>]> {
        r.nodes6.as_deref()
    }
    fn set_nodes(r: &mut Response, nodes: Vec<NodeInfo<Self>>) {
        r.nodes6 = Some(nodes);
    }
    fn values_of(r: &Response) -> &[Self] {
        &r.values6
    }
    fn set_values(r: &mut Response, values: Vec<Self>) {
        r.values6 = values;
    }
}

/// BEP 32 `want`: which node lists a querier asks for (`n4`, `n6`). Empty means "the family
/// of the socket the query came in on", which the answering side decides.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Want {
    /// `n4`: IPv4 nodes (`nodes`).
    pub n4: bool,
    /// `n6`: IPv6 nodes (`nodes6`).
    pub n6: bool,
}

impl Want {
    /// Nothing asked: the default lists of the receiving socket's family.
    pub const NONE: Want = Want {
        n4: false,
        n6: false,
    };
    /// Only `n4`.
    pub const N4: Want = Want {
        n4: true,
        n6: false,
    };
    /// Only `n6`.
    pub const N6: Want = Want {
        n4: false,
        n6: true,
    };
    /// Both families (what a dual-stack node asks).
    pub const BOTH: Want = Want { n4: true, n6: true };

    /// Whether nothing was asked.
    pub fn is_empty(self) -> bool {
        !self.n4 && !self.n6
    }
}

/// A DHT contact: who a node is and where it listens. `A` is the family (IPv4 by default).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeInfo<A = SocketAddrV4> {
    /// The node's 160-bit id.
    pub id: Id,
    /// Its UDP endpoint.
    pub addr: A,
}

/// One decoded KRPC datagram.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Transaction id chosen by the querier and echoed by the responder.
    pub tid: Vec<u8>,
    /// Client version string (`v`), if the sender gave one.
    pub version: Option<Vec<u8>>,
    /// Our address as the sender sees it (`ip`, BEP 42; 6 or 18 bytes); set in responses.
    pub ip: Option<SocketAddr>,
    /// Read-only node (`ro`, BEP 43): it must never enter a routing table.
    pub read_only: bool,
    /// What the message says.
    pub body: Body,
}

/// The three kinds of KRPC message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// `y = q`.
    Query(Query),
    /// `y = r`.
    Response(Response),
    /// `y = e`.
    Error(KrpcError),
}

/// A query, with the sender's id (every query carries one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// The querying node's id.
    pub id: Id,
    /// Method and arguments.
    pub method: Method,
    /// BEP 32 `want` (find_node, get_peers): which families' nodes to return.
    pub want: Want,
}

/// The BEP 5 methods, plus whatever else a peer may send (answered with error 204).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// Liveness check.
    Ping,
    /// Asks for the 8 closest nodes to `target`.
    FindNode {
        /// Id whose neighbours are wanted.
        target: Id,
    },
    /// Asks for peers of a torrent, or else the closest nodes.
    GetPeers {
        /// The torrent's info-hash.
        info_hash: Id,
    },
    /// Registers the sender as a peer of a torrent.
    AnnouncePeer {
        /// The torrent's info-hash.
        info_hash: Id,
        /// Port the peer listens on (ignored when `implied_port`).
        port: u16,
        /// Use the UDP source port instead of `port` (NAT friendliness).
        implied_port: bool,
        /// Write token previously handed out by a get_peers answer.
        token: Vec<u8>,
    },
    /// A method we do not implement; the name is kept for logging.
    Unknown(Vec<u8>),
}

impl Method {
    /// Wire name of the method.
    pub fn name(&self) -> &[u8] {
        match self {
            Method::Ping => b"ping",
            Method::FindNode { .. } => b"find_node",
            Method::GetPeers { .. } => b"get_peers",
            Method::AnnouncePeer { .. } => b"announce_peer",
            Method::Unknown(n) => n,
        }
    }
}

/// A response. KRPC responses do not name their method, so every optional field is here and
/// the querier interprets them by what it asked.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Response {
    /// The responding node's id.
    pub id: Id,
    /// Closest IPv4 nodes (find_node, get_peers). `Some` even when empty: a find_node or
    /// get_peers answer always carries the key (BEP 5), a ping answer never does.
    pub nodes: Option<Vec<NodeInfo>>,
    /// Closest IPv6 nodes (BEP 32 `nodes6`), present when asked for (`want n6`) or when
    /// answering over IPv6.
    pub nodes6: Option<Vec<NodeInfo<SocketAddrV6>>>,
    /// IPv4 peers (get_peers `values`, 6-byte entries).
    pub values: Vec<SocketAddrV4>,
    /// IPv6 peers (get_peers `values`, 18-byte entries, BEP 32).
    pub values6: Vec<SocketAddrV6>,
    /// Write token (get_peers).
    pub token: Option<Vec<u8>>,
}

/// KRPC error codes of BEP 5.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 201.
    Generic,
    /// 202.
    Server,
    /// 203: malformed packet, invalid arguments or bad token.
    Protocol,
    /// 204.
    MethodUnknown,
    /// Any other code a peer may send.
    Other(i64),
}

impl ErrorCode {
    /// Numeric code on the wire.
    pub fn code(self) -> i64 {
        match self {
            ErrorCode::Generic => 201,
            ErrorCode::Server => 202,
            ErrorCode::Protocol => 203,
            ErrorCode::MethodUnknown => 204,
            ErrorCode::Other(c) => c,
        }
    }

    /// Maps a wire code to the enum.
    pub fn from_code(c: i64) -> ErrorCode {
        match c {
            201 => ErrorCode::Generic,
            202 => ErrorCode::Server,
            203 => ErrorCode::Protocol,
            204 => ErrorCode::MethodUnknown,
            other => ErrorCode::Other(other),
        }
    }
}

/// A KRPC error message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KrpcError {
    /// The code.
    pub code: ErrorCode,
    /// Human-readable text.
    pub message: Vec<u8>,
}

/// Why a datagram could not be decoded. `tid` is set when the transaction id could be read,
/// so a malformed query can still be answered with error 203.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed KRPC message: {reason}")]
pub struct DecodeError {
    /// What was wrong.
    pub reason: &'static str,
    /// Transaction id if one could be recovered and the message looked like a query.
    pub query_tid: Option<Vec<u8>>,
}

impl DecodeError {
    fn new(reason: &'static str) -> Self {
        DecodeError {
            reason,
            query_tid: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw serde shapes. Field order is alphabetical so serialization emits sorted keys.

#[derive(Deserialize, Serialize, Default)]
struct RawArgs<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    id: Option<&'a Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    implied_port: Option<i64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    info_hash: Option<&'a Bytes>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    nodes: Option<&'a Bytes>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    nodes6: Option<&'a Bytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    port: Option<i64>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    target: Option<&'a Bytes>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    token: Option<&'a Bytes>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    values: Option<Vec<&'a Bytes>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    want: Option<Vec<&'a Bytes>>,
}

#[derive(Deserialize, Serialize)]
struct RawMessage<'a> {
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    a: Option<RawArgs<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    e: Option<(i64, ByteBuf)>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    ip: Option<&'a Bytes>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    q: Option<&'a Bytes>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    r: Option<RawArgs<'a>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ro: Option<i64>,
    #[serde(borrow, default)]
    t: Option<&'a Bytes>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    v: Option<&'a Bytes>,
    #[serde(borrow, default)]
    y: Option<&'a Bytes>,
}

/// A minimal bencode writer for the hot encoding path.
struct Writer(Vec<u8>);

impl Writer {
    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    /// Decimal digits of `v`, without `core::fmt` (a hot path: every string has a length).
    fn uint(&mut self, v: u64) {
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut v = v;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
            start -= 1;
            if v == 0 {
                break;
            }
        }
        self.0
            .extend_from_slice(digits.get(start..).unwrap_or_default());
    }
    fn len_prefix(&mut self, n: usize) {
        self.uint(n as u64);
        self.0.push(b':');
    }
    fn bytes(&mut self, b: &[u8]) {
        self.len_prefix(b.len());
        self.0.extend_from_slice(b);
    }
    fn key(&mut self, k: &[u8]) {
        self.bytes(k);
    }
    fn int(&mut self, v: i64) {
        self.0.push(b'i');
        if v < 0 {
            self.0.push(b'-');
        }
        self.uint(v.unsigned_abs());
        self.0.push(b'e');
    }
}

/// Checks that `buf` is one well-formed bencode value nested at most `MAX_DEPTH` deep,
/// without recursion, before serde (which recurses) sees it.
fn check_shape(buf: &[u8]) -> Result<(), DecodeError> {
    let mut depth = 0usize;
    let mut i = 0usize;
    let mut seen_value = false;
    while i < buf.len() {
        if depth == 0 && seen_value {
            return Err(DecodeError::new("trailing bytes after message"));
        }
        let c = buf[i];
        match c {
            b'd' | b'l' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(DecodeError::new("nesting too deep"));
                }
                i += 1;
            }
            b'e' => {
                if depth == 0 {
                    return Err(DecodeError::new("unbalanced end"));
                }
                depth -= 1;
                i += 1;
                if depth == 0 {
                    seen_value = true;
                }
            }
            b'i' => {
                let end = buf[i..]
                    .iter()
                    .position(|&b| b == b'e')
                    .ok_or(DecodeError::new("unterminated integer"))?;
                i += end + 1;
                if depth == 0 {
                    seen_value = true;
                }
            }
            b'0'..=b'9' => {
                let colon = buf[i..]
                    .iter()
                    .take(12)
                    .position(|&b| b == b':')
                    .ok_or(DecodeError::new("bad string length"))?;
                let len: usize = std::str::from_utf8(&buf[i..i + colon])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or(DecodeError::new("bad string length"))?;
                i = i
                    .checked_add(colon + 1)
                    .and_then(|x| x.checked_add(len))
                    .filter(|&x| x <= buf.len())
                    .ok_or(DecodeError::new("string past end of datagram"))?;
                if depth == 0 {
                    seen_value = true;
                }
            }
            _ => return Err(DecodeError::new("not bencode")),
        }
    }
    if depth != 0 || !seen_value {
        return Err(DecodeError::new("truncated message"));
    }
    Ok(())
}

fn id_of(b: Option<&Bytes>, what: &'static str) -> Result<Id, &'static str> {
    b.and_then(|b| Id::from_slice(b)).ok_or(what)
}

fn port_of(v: Option<i64>) -> Option<u16> {
    v.and_then(|p| u16::try_from(p).ok())
}

/// Parses compact IPv4 node info; a trailing partial entry is ignored, as libtorrent does.
pub fn decode_nodes(buf: &[u8]) -> Vec<NodeInfo> {
    decode_node_list(buf)
}

/// Parses compact node info of family `A` (`nodes` or BEP 32 `nodes6`); a trailing partial
/// entry is ignored.
pub fn decode_node_list<A: DhtAddr>(buf: &[u8]) -> Vec<NodeInfo<A>> {
    buf.chunks_exact(20 + A::COMPACT_LEN)
        .filter_map(|c| {
            let id = Id::from_slice(c.get(..20)?)?;
            let addr = A::decode_compact(c.get(20..)?)?;
            Some(NodeInfo { id, addr })
        })
        .collect()
}

/// Encodes nodes of family `A` in compact node info form.
pub fn encode_node_list<A: DhtAddr>(nodes: &[NodeInfo<A>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nodes.len() * (20 + A::COMPACT_LEN));
    for n in nodes {
        out.extend_from_slice(&n.id.0);
        n.addr.write_compact(&mut out);
    }
    out
}

/// Parses one compact IPv6 peer (18 bytes, BEP 32).
pub fn decode_peer6(b: &[u8]) -> Option<SocketAddrV6> {
    let b: &[u8; COMPACT_PEER6_LEN] = b.try_into().ok()?;
    let (ip, port) = b.split_at(16);
    let ip: [u8; 16] = ip.try_into().ok()?;
    let port: [u8; 2] = port.try_into().ok()?;
    Some(SocketAddrV6::new(
        Ipv6Addr::from(ip),
        u16::from_be_bytes(port),
        0,
        0,
    ))
}

/// Encodes an IPv6 peer or node address in the 18-byte compact form.
pub fn encode_peer6(a: &SocketAddrV6) -> [u8; COMPACT_PEER6_LEN] {
    let mut out = [0u8; COMPACT_PEER6_LEN];
    out[..16].copy_from_slice(&a.ip().octets());
    out[16..].copy_from_slice(&a.port().to_be_bytes());
    out
}

/// Parses the `ip` key (BEP 42 / BEP 32): 6 bytes for IPv4, 18 for IPv6.
fn decode_ip_key(b: &[u8]) -> Option<SocketAddr> {
    match b.len() {
        COMPACT_PEER_LEN => decode_peer(b).map(SocketAddr::V4),
        COMPACT_PEER6_LEN => decode_peer6(b).map(SocketAddr::V6),
        _ => None,
    }
}

/// Encodes the `ip` key in the compact form of its family.
fn encode_ip_key(a: &SocketAddr) -> Vec<u8> {
    match a {
        SocketAddr::V4(a) => encode_peer(a).to_vec(),
        SocketAddr::V6(a) => encode_peer6(a).to_vec(),
    }
}

/// Parses BEP 32 `want`: unknown entries are ignored.
fn decode_want(list: Option<Vec<&Bytes>>) -> Want {
    let mut w = Want::NONE;
    for item in list.unwrap_or_default() {
        match &item[..] {
            b"n4" => w.n4 = true,
            b"n6" => w.n6 = true,
            _ => {}
        }
    }
    w
}

/// The `want` list on the wire, in a fixed order.
fn want_items(w: Want) -> impl Iterator<Item = &'static [u8]> {
    [(w.n4, &b"n4"[..]), (w.n6, &b"n6"[..])]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
}

/// Parses one compact peer (6 bytes).
pub fn decode_peer(b: &[u8]) -> Option<SocketAddrV4> {
    let b: &[u8; 6] = b.try_into().ok()?;
    Some(SocketAddrV4::new(
        Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        u16::from_be_bytes([b[4], b[5]]),
    ))
}

/// Encodes a peer or node address in the 6-byte compact form.
pub fn encode_peer(a: &SocketAddrV4) -> [u8; 6] {
    let ip = a.ip().octets();
    let p = a.port().to_be_bytes();
    [ip[0], ip[1], ip[2], ip[3], p[0], p[1]]
}

/// Encodes IPv4 nodes in compact node info form.
pub fn encode_nodes(nodes: &[NodeInfo]) -> Vec<u8> {
    encode_node_list(nodes)
}

impl Message {
    /// Decodes one datagram. Never panics; errors say what was wrong.
    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        check_shape(buf)?;
        let raw: RawMessage<'_> =
            bt_bencode::from_slice(buf).map_err(|_| DecodeError::new("not a KRPC dictionary"))?;
        let tid = raw
            .t
            .map(|t| t.to_vec())
            .ok_or(DecodeError::new("missing transaction id"))?;
        let y = raw.y.map(|y| &y[..]).unwrap_or(b"");
        let query_err = |reason: &'static str| DecodeError {
            reason,
            query_tid: Some(tid.clone()),
        };
        let body = match y {
            b"q" => {
                let method = raw.q.ok_or_else(|| query_err("query without method"))?;
                let a = raw.a.ok_or_else(|| query_err("query without arguments"))?;
                let id = id_of(a.id, "query without a valid id").map_err(query_err)?;
                let method = match &method[..] {
                    b"ping" => Method::Ping,
                    b"find_node" => Method::FindNode {
                        target: id_of(a.target, "find_node without a valid target")
                            .map_err(query_err)?,
                    },
                    b"get_peers" => Method::GetPeers {
                        info_hash: id_of(a.info_hash, "get_peers without a valid info_hash")
                            .map_err(query_err)?,
                    },
                    b"announce_peer" => {
                        let info_hash = id_of(a.info_hash, "announce_peer without info_hash")
                            .map_err(query_err)?;
                        let implied_port = a.implied_port.unwrap_or(0) != 0;
                        let port = match port_of(a.port) {
                            Some(p) => p,
                            None if implied_port => 0,
                            None => return Err(query_err("announce_peer without a valid port")),
                        };
                        let token = a
                            .token
                            .ok_or_else(|| query_err("announce_peer without token"))?
                            .to_vec();
                        Method::AnnouncePeer {
                            info_hash,
                            port,
                            implied_port,
                            token,
                        }
                    }
                    other => Method::Unknown(other.to_vec()),
                };
                let want = decode_want(a.want);
                Body::Query(Query { id, method, want })
            }
            b"r" => {
                let r = raw.r.ok_or(DecodeError::new("response without body"))?;
                let id = id_of(r.id, "response without a valid id").map_err(DecodeError::new)?;
                let mut values = Vec::new();
                let mut values6 = Vec::new();
                for v in r.values.unwrap_or_default() {
                    // Each entry's length says its family (BEP 32); others are ignored.
                    if let Some(p) = decode_peer(v) {
                        values.push(p);
                    } else if let Some(p) = decode_peer6(v) {
                        values6.push(p);
                    }
                }
                Body::Response(Response {
                    id,
                    nodes: r.nodes.map(|n| decode_nodes(n)),
                    nodes6: r.nodes6.map(|n| decode_node_list(n)),
                    values,
                    values6,
                    token: r.token.map(|t| t.to_vec()),
                })
            }
            b"e" => {
                let (code, message) = raw.e.ok_or(DecodeError::new("error without body"))?;
                Body::Error(KrpcError {
                    code: ErrorCode::from_code(code),
                    message: message.into_vec(),
                })
            }
            _ => return Err(DecodeError::new("unknown message type")),
        };
        Ok(Message {
            tid,
            version: raw.v.map(|v| v.to_vec()),
            ip: raw.ip.and_then(|b| decode_ip_key(b)),
            read_only: raw.ro.unwrap_or(0) == 1,
            body,
        })
    }

    /// Encodes the message as a bencoded datagram (keys sorted, as bencode requires).
    ///
    /// Written out by hand because it runs for every datagram we send: it produces exactly the
    /// bytes the serde path ([`Message::encode_with_serde`]) does (a property test checks
    /// this) without building intermediate maps.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(self.encoded_len_hint()));
        w.raw(b"d");
        match &self.body {
            Body::Query(q) => {
                w.key(b"a");
                w.raw(b"d");
                w.key(b"id");
                w.bytes(&q.id.0);
                match &q.method {
                    Method::Ping | Method::Unknown(_) => {}
                    Method::FindNode { target } => {
                        w.key(b"target");
                        w.bytes(&target.0);
                    }
                    Method::GetPeers { info_hash } => {
                        w.key(b"info_hash");
                        w.bytes(&info_hash.0);
                    }
                    Method::AnnouncePeer {
                        info_hash,
                        port,
                        implied_port,
                        token,
                    } => {
                        w.key(b"implied_port");
                        w.int(i64::from(*implied_port));
                        w.key(b"info_hash");
                        w.bytes(&info_hash.0);
                        w.key(b"port");
                        w.int(i64::from(*port));
                        w.key(b"token");
                        w.bytes(token);
                    }
                }
                if !q.want.is_empty() {
                    w.key(b"want");
                    w.raw(b"l");
                    for item in want_items(q.want) {
                        w.bytes(item);
                    }
                    w.raw(b"e");
                }
                w.raw(b"e");
            }
            Body::Error(e) => {
                w.key(b"e");
                w.raw(b"l");
                w.int(e.code.code());
                w.bytes(&e.message);
                w.raw(b"e");
            }
            Body::Response(_) => {}
        }
        if let Some(ip) = &self.ip {
            w.key(b"ip");
            match ip {
                SocketAddr::V4(a) => w.bytes(&encode_peer(a)),
                SocketAddr::V6(a) => w.bytes(&encode_peer6(a)),
            }
        }
        if let Body::Query(q) = &self.body {
            w.key(b"q");
            w.bytes(q.method.name());
        }
        if let Body::Response(r) = &self.body {
            w.key(b"r");
            w.raw(b"d");
            w.key(b"id");
            w.bytes(&r.id.0);
            if let Some(nodes) = &r.nodes {
                w.key(b"nodes");
                w.len_prefix(nodes.len() * COMPACT_NODE_LEN);
                for n in nodes {
                    w.raw(&n.id.0);
                    w.raw(&encode_peer(&n.addr));
                }
            }
            if let Some(nodes) = &r.nodes6 {
                w.key(b"nodes6");
                w.len_prefix(nodes.len() * COMPACT_NODE6_LEN);
                for n in nodes {
                    w.raw(&n.id.0);
                    w.raw(&encode_peer6(&n.addr));
                }
            }
            if let Some(t) = &r.token {
                w.key(b"token");
                w.bytes(t);
            }
            if !r.values.is_empty() || !r.values6.is_empty() {
                w.key(b"values");
                w.raw(b"l");
                for v in &r.values {
                    w.bytes(&encode_peer(v));
                }
                for v in &r.values6 {
                    w.bytes(&encode_peer6(v));
                }
                w.raw(b"e");
            }
            w.raw(b"e");
        }
        if self.read_only {
            w.key(b"ro");
            w.int(1);
        }
        w.key(b"t");
        w.bytes(&self.tid);
        if let Some(v) = &self.version {
            w.key(b"v");
            w.bytes(v);
        }
        w.key(b"y");
        w.bytes(match self.body {
            Body::Query(_) => b"q",
            Body::Response(_) => b"r",
            Body::Error(_) => b"e",
        });
        w.raw(b"e");
        w.0
    }

    fn encoded_len_hint(&self) -> usize {
        let body = match &self.body {
            Body::Response(r) => {
                r.nodes.as_ref().map_or(0, |n| n.len() * COMPACT_NODE_LEN)
                    + r.nodes6.as_ref().map_or(0, |n| n.len() * COMPACT_NODE6_LEN)
                    + r.values.len() * 8
                    + r.values6.len() * 21
                    + 80
            }
            Body::Query(_) => 120,
            Body::Error(e) => e.message.len() + 32,
        };
        body + self.tid.len() + 40
    }

    /// The reference encoding through bt_bencode + serde; [`Message::encode`] must match it.
    pub fn encode_with_serde(&self) -> Vec<u8> {
        let ip = self.ip.as_ref().map(encode_ip_key);
        let mut raw = RawMessage {
            a: None,
            e: None,
            ip: ip.as_deref().map(Bytes::new),
            q: None,
            r: None,
            ro: if self.read_only { Some(1) } else { None },
            t: Some(Bytes::new(&self.tid)),
            v: self.version.as_deref().map(Bytes::new),
            y: None,
        };
        let nodes_buf;
        let nodes6_buf;
        let values_buf: Vec<Vec<u8>>;
        match &self.body {
            Body::Query(q) => {
                raw.y = Some(Bytes::new(b"q"));
                raw.q = Some(Bytes::new(q.method.name()));
                let mut a = RawArgs {
                    id: Some(Bytes::new(&q.id.0)),
                    want: if q.want.is_empty() {
                        None
                    } else {
                        Some(want_items(q.want).map(Bytes::new).collect())
                    },
                    ..Default::default()
                };
                match &q.method {
                    Method::Ping | Method::Unknown(_) => {}
                    Method::FindNode { target } => a.target = Some(Bytes::new(&target.0)),
                    Method::GetPeers { info_hash } => a.info_hash = Some(Bytes::new(&info_hash.0)),
                    Method::AnnouncePeer {
                        info_hash,
                        port,
                        implied_port,
                        token,
                    } => {
                        a.info_hash = Some(Bytes::new(&info_hash.0));
                        a.port = Some(i64::from(*port));
                        a.implied_port = Some(i64::from(*implied_port));
                        a.token = Some(Bytes::new(token));
                    }
                }
                raw.a = Some(a);
            }
            Body::Response(r) => {
                raw.y = Some(Bytes::new(b"r"));
                nodes_buf = r.nodes.as_deref().map(encode_nodes);
                nodes6_buf = r.nodes6.as_deref().map(encode_node_list);
                values_buf = r
                    .values
                    .iter()
                    .map(|v| encode_peer(v).to_vec())
                    .chain(r.values6.iter().map(|v| encode_peer6(v).to_vec()))
                    .collect();
                raw.r = Some(RawArgs {
                    id: Some(Bytes::new(&r.id.0)),
                    nodes: nodes_buf.as_deref().map(Bytes::new),
                    nodes6: nodes6_buf.as_deref().map(Bytes::new),
                    token: r.token.as_deref().map(Bytes::new),
                    values: if values_buf.is_empty() {
                        None
                    } else {
                        Some(values_buf.iter().map(|v| Bytes::new(v)).collect())
                    },
                    ..Default::default()
                });
            }
            Body::Error(e) => {
                raw.y = Some(Bytes::new(b"e"));
                raw.e = Some((e.code.code(), ByteBuf::from(e.message.clone())));
            }
        }
        // Serializing plain byte strings, integers and maps cannot fail.
        bt_bencode::to_vec(&raw).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_writer_formats_integers_like_core_fmt() {
        for v in [
            0i64,
            1,
            9,
            10,
            99,
            100,
            6881,
            65535,
            i64::MAX,
            -1,
            -10,
            i64::MIN,
        ] {
            let mut w = Writer(Vec::new());
            w.int(v);
            assert_eq!(w.0, format!("i{v}e").into_bytes());
        }
        for n in [0usize, 7, 10, 20, 416, 1000, usize::MAX] {
            let mut w = Writer(Vec::new());
            w.len_prefix(n);
            assert_eq!(w.0, format!("{n}:").into_bytes());
        }
    }

    fn id(b: u8) -> Id {
        Id([b; 20])
    }

    #[test]
    fn decodes_bep5_examples() {
        let m =
            Message::decode(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe").unwrap();
        assert_eq!(m.tid, b"aa");
        assert_eq!(
            m.body,
            Body::Query(Query {
                id: Id(*b"abcdefghij0123456789"),
                method: Method::Ping,
                want: Want::NONE,
            })
        );
        let m = Message::decode(
            b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
        )
        .unwrap();
        match m.body {
            Body::Response(r) => {
                assert_eq!(r.token.as_deref(), Some(&b"aoeusnth"[..]));
                assert_eq!(r.values.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let m = Message::decode(b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee").unwrap();
        assert_eq!(
            m.body,
            Body::Error(KrpcError {
                code: ErrorCode::Generic,
                message: b"A Generic Error Ocurred".to_vec()
            })
        );
    }

    #[test]
    fn encodes_sorted_keys_like_bep5() {
        let m = Message {
            tid: b"aa".to_vec(),
            version: None,
            ip: None,
            read_only: false,
            body: Body::Query(Query {
                id: Id(*b"abcdefghij0123456789"),
                method: Method::GetPeers {
                    info_hash: Id(*b"mnopqrstuvwxyz123456"),
                },
                want: Want::NONE,
            }),
        };
        assert_eq!(
            m.encode(),
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe"
        );
    }

    #[test]
    fn malformed_query_keeps_tid_for_error_203() {
        let e = Message::decode(b"d1:ad2:id3:abce1:q4:ping1:t2:xy1:y1:qe").unwrap_err();
        assert_eq!(e.query_tid.as_deref(), Some(&b"xy"[..]));
    }

    #[test]
    fn unknown_method_is_kept() {
        let m =
            Message::decode(b"d1:ad2:id20:abcdefghij0123456789e1:q4:vote1:t2:aa1:y1:qe").unwrap();
        match m.body {
            Body::Query(Query {
                method: Method::Unknown(name),
                ..
            }) => assert_eq!(name, b"vote"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut buf = vec![b'l'; 60_000];
        buf.extend(std::iter::repeat_n(b'e', 60_000));
        assert!(Message::decode(&buf).is_err());
        assert!(Message::decode(b"d1:t99999999999:x").is_err());
        assert!(Message::decode(b"").is_err());
        assert!(Message::decode(b"i5e").is_err());
    }

    fn arb_id() -> impl Strategy<Value = Id> {
        any::<[u8; 20]>().prop_map(Id)
    }
    fn arb_addr() -> impl Strategy<Value = SocketAddrV4> {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddrV4::new(ip.into(), p))
    }
    fn arb_addr6() -> impl Strategy<Value = SocketAddrV6> {
        (any::<[u8; 16]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddrV6::new(ip.into(), p, 0, 0))
    }
    fn arb_ip_key() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            arb_addr().prop_map(SocketAddr::V4),
            arb_addr6().prop_map(SocketAddr::V6)
        ]
    }
    fn arb_want() -> impl Strategy<Value = Want> {
        (any::<bool>(), any::<bool>()).prop_map(|(n4, n6)| Want { n4, n6 })
    }
    fn arb_body() -> impl Strategy<Value = Body> {
        let query = (
            arb_id(),
            prop_oneof![
                Just(Method::Ping),
                arb_id().prop_map(|target| Method::FindNode { target }),
                arb_id().prop_map(|info_hash| Method::GetPeers { info_hash }),
                (
                    arb_id(),
                    any::<u16>(),
                    any::<bool>(),
                    proptest::collection::vec(any::<u8>(), 0..20)
                )
                    .prop_map(|(info_hash, port, implied_port, token)| {
                        Method::AnnouncePeer {
                            info_hash,
                            port,
                            implied_port,
                            token,
                        }
                    }),
                proptest::collection::vec(b'a'..=b'z', 1..10).prop_map(Method::Unknown),
            ],
            arb_want(),
        )
            .prop_map(|(id, method, want)| Body::Query(Query { id, method, want }));
        let response = (
            arb_id(),
            proptest::option::of(proptest::collection::vec(
                (arb_id(), arb_addr()).prop_map(|(id, addr)| NodeInfo { id, addr }),
                0..8,
            )),
            proptest::option::of(proptest::collection::vec(
                (arb_id(), arb_addr6()).prop_map(|(id, addr)| NodeInfo { id, addr }),
                0..8,
            )),
            proptest::collection::vec(arb_addr(), 0..50),
            proptest::collection::vec(arb_addr6(), 0..20),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
        )
            .prop_map(|(id, nodes, nodes6, values, values6, token)| {
                Body::Response(Response {
                    id,
                    nodes,
                    nodes6,
                    values,
                    values6,
                    token,
                })
            });
        let error = (201i64..=204, proptest::collection::vec(any::<u8>(), 0..30)).prop_map(
            |(c, message)| {
                Body::Error(KrpcError {
                    code: ErrorCode::from_code(c),
                    message,
                })
            },
        );
        prop_oneof![query, response, error]
    }

    proptest! {
        #[test]
        fn round_trip(
            tid in proptest::collection::vec(any::<u8>(), 1..8),
            version in proptest::option::of(proptest::collection::vec(any::<u8>(), 4)),
            ip in proptest::option::of(arb_ip_key()),
            read_only in any::<bool>(),
            body in arb_body(),
        ) {
            let m = Message { tid, version, ip, read_only, body };
            let bytes = m.encode();
            prop_assert_eq!(&bytes, &m.encode_with_serde());
            prop_assert_eq!(Message::decode(&bytes).unwrap(), m);
        }

        #[test]
        fn random_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Message::decode(&buf);
        }

        #[test]
        fn mutated_messages_never_panic(
            body in arb_body(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
            cut in any::<usize>(),
        ) {
            let m = Message { tid: b"ab".to_vec(), version: None, ip: None, read_only: false, body };
            let mut bytes = m.encode();
            for (pos, val) in flips {
                let n = bytes.len();
                bytes[pos % n] = val;
            }
            let _ = Message::decode(&bytes);
            let n = bytes.len();
            bytes.truncate(cut % (n + 1));
            let _ = Message::decode(&bytes);
        }
    }

    #[test]
    fn compact_nodes_round_trip() {
        let nodes = vec![NodeInfo {
            id: id(3),
            addr: SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 6881),
        }];
        let enc = encode_nodes(&nodes);
        assert_eq!(enc.len(), 26);
        assert_eq!(decode_nodes(&enc), nodes);
        let mut partial = enc.clone();
        partial.extend_from_slice(&[1, 2, 3]);
        assert_eq!(decode_nodes(&partial), nodes);
    }

    #[test]
    fn empty_node_list_is_still_sent() {
        // Hole 11: a find_node / get_peers answer names `nodes` even with nothing to give.
        let m = Message {
            tid: b"aa".to_vec(),
            version: None,
            ip: None,
            read_only: false,
            body: Body::Response(Response {
                id: Id(*b"abcdefghij0123456789"),
                nodes: Some(Vec::new()),
                ..Response::default()
            }),
        };
        let bytes = m.encode();
        assert_eq!(
            bytes,
            b"d1:rd2:id20:abcdefghij01234567895:nodes0:e1:t2:aa1:y1:re"
        );
        assert_eq!(bytes, m.encode_with_serde());
        assert_eq!(Message::decode(&bytes).unwrap(), m);
    }

    #[test]
    fn bep32_nodes6_values6_and_ip6_are_decoded() {
        // A reply as a BEP 32 node sends it: an 18-byte `ip`, `nodes6` with one 38-byte entry
        // (plus a stray partial one), and `values` mixing 6- and 18-byte peers.
        let ip6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        let mut ip_key = ip6.octets().to_vec();
        ip_key.extend_from_slice(&6881u16.to_be_bytes());
        let mut node6 = vec![7u8; 20];
        node6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        node6.extend_from_slice(&1234u16.to_be_bytes());
        let mut partial = node6.clone();
        partial.extend_from_slice(&[1, 2, 3]);
        let mut peer6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9)
            .octets()
            .to_vec();
        peer6.extend_from_slice(&80u16.to_be_bytes());
        let mut buf = b"d2:ip18:".to_vec();
        buf.extend_from_slice(&ip_key);
        buf.extend_from_slice(b"1:rd2:id20:abcdefghij01234567896:nodes641:");
        buf.extend_from_slice(&partial);
        buf.extend_from_slice(b"6:valuesl6:axje.u18:");
        buf.extend_from_slice(&peer6);
        buf.extend_from_slice(b"3:oddee1:t2:aa1:y1:re");
        let m = Message::decode(&buf).unwrap();
        assert_eq!(
            m.ip,
            Some(SocketAddr::V6(SocketAddrV6::new(ip6, 6881, 0, 0)))
        );
        let Body::Response(r) = m.body else {
            panic!("expected a response")
        };
        assert_eq!(r.nodes, None, "no `nodes` key");
        assert_eq!(
            r.nodes6,
            Some(vec![NodeInfo {
                id: Id([7; 20]),
                addr: SocketAddrV6::new(Ipv6Addr::LOCALHOST, 1234, 0, 0)
            }])
        );
        assert_eq!(r.values, vec![decode_peer(b"axje.u").unwrap()]);
        assert_eq!(r.values6, vec![decode_peer6(&peer6).unwrap()]);
        assert_eq!(SocketAddrV6::values_of(&r), &r.values6[..]);
        assert_eq!(SocketAddrV4::nodes_of(&r), None);
    }

    #[test]
    fn bep32_want_is_read_and_written() {
        let m = Message::decode(
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz1234564:wantl2:n42:n62:xxee1:q9:find_node1:t2:aa1:y1:qe",
        )
        .unwrap();
        let Body::Query(q) = &m.body else {
            panic!("expected a query")
        };
        assert_eq!(q.want, Want::BOTH);
        let again = m.encode();
        assert!(again
            .windows(b"4:wantl2:n42:n6e".len())
            .any(|w| w == b"4:wantl2:n42:n6e"));
        assert_eq!(again, m.encode_with_serde());
        let m = Message::decode(
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
        )
        .unwrap();
        let Body::Query(q) = &m.body else {
            panic!("expected a query")
        };
        assert!(q.want.is_empty(), "no want key: the socket's family");
    }

    #[test]
    fn family_conversions() {
        let v4 = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 5);
        let mapped = SocketAddr::V6(SocketAddrV6::new(
            Ipv4Addr::new(1, 2, 3, 4).to_ipv6_mapped(),
            5,
            0,
            0,
        ));
        assert_eq!(SocketAddrV4::from_socket_addr(mapped), Some(v4));
        assert_eq!(SocketAddrV6::from_socket_addr(mapped), None);
        let v6 = SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 3, 4);
        assert_eq!(
            SocketAddrV6::from_socket_addr(SocketAddr::V6(v6)),
            Some(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0, 0)),
            "flow info and scope are not part of a DHT address"
        );
        let nodes = vec![NodeInfo {
            id: id(1),
            addr: SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0, 0),
        }];
        let enc = encode_node_list(&nodes);
        assert_eq!(enc.len(), COMPACT_NODE6_LEN);
        assert_eq!(decode_node_list::<SocketAddrV6>(&enc), nodes);
    }
}
